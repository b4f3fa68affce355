"""The serial protocol: host frame decoder (fuzzed), and the real firmware in QEMU over a TCP socket.

End to end, `edgejpq validate --qemu` builds the serial firmware for the Cortex-M4, runs it in
qemu-system-arm with its UART on a loopback socket and validates digits samples through pyserial,
bit-exact. A proxy between host and firmware then drops, corrupts, truncates and reorders bytes
(and injects a RESET): every fault ends in a safe retry with the same bytes or in a clear error,
within a bounded time.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from codegen.generate import generate_sources
from edgejpq.artifact import QuantizedModel, save_model
from edgejpq.cli import app
from edgejpq.cost.target import load_target
from edgejpq.emulate.qemu import build_qemu
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import predict
from edgejpq.serial.link import SerialLink
from edgejpq.serial.protocol import (HELLO_FLAG_BOOT, MAGIC, MAX_PAYLOAD, ErrorCode, Frame, FrameDecoder, Hello,
                                     MessageType, TensorSpec, crc32, decode_hello, encode_frame, encode_hello,
                                     model_hello)
from edgejpq.serial.qemu import QemuSerial
from edgejpq.serial.validate import validate_link, validate_qemu

from needs import need_programs
from random_models import coverage_model
from serial_proxy import TO_FIRMWARE, TO_HOST, FaultProxy, drop, flip, on_frame, swap, truncate

pytestmark = pytest.mark.serial

FAULT_SAMPLES = 8
FAST_TIMEOUT = 0.5  # seconds an answer may take in the fault tests (a QEMU inference takes ~2 ms)


def _need_tools() -> None:
    need_programs()


# --------------------------------------------------------------------------- frames (no firmware)


def test_frame_layout_and_crc_is_zlib() -> None:
    frame = encode_frame(MessageType.RUN, 7, b"\x01\x02\x03")
    assert frame[:2] == MAGIC and frame[2] == MessageType.RUN and frame[3] == 7
    assert struct.unpack_from("<HH", frame, 4) == (3, 3 ^ 0xFFFF) and frame[8:11] == b"\x01\x02\x03"
    import zlib

    assert struct.unpack_from("<I", frame, 11)[0] == zlib.crc32(frame[2:11]) == crc32(frame[2:11])
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32/IEEE check value
    assert FrameDecoder().feed(frame) == [Frame(MessageType.RUN, 7, b"\x01\x02\x03")]


def test_hello_round_trip_and_version_check() -> None:
    model = coverage_model()
    hello = model_hello(model, target="cortex-m4", board="qemu:mps2-an386", clock_hz=180_000_000,
                        flags=HELLO_FLAG_BOOT)
    again = decode_hello(encode_hello(hello), "test")
    assert again == hello and again.boot and not again.cycle_counter
    assert again.input.size == model.input_info.size and again.model_hash == model.content_hash
    payload = bytearray(encode_hello(hello))
    payload[0] = 9
    with pytest.raises(EdgejpqError, match="protocol version 9"):
        decode_hello(bytes(payload), "test")
    with pytest.raises(EdgejpqError, match="ends inside its board name"):
        decode_hello(encode_hello(hello)[:-len(hello.firmware) - 3], "test")


def test_decoder_skips_damaged_frames_and_recovers_after_a_timeout() -> None:
    good = [encode_frame(MessageType.RUN_REPLY, i, bytes(range(i))) for i in range(1, 5)]
    damaged = bytearray(good[1])
    damaged[7] ^= 1
    decoder = FrameDecoder()
    frames = decoder.feed(b"noise" + good[0] + bytes(damaged) + good[2])
    assert [f.seq for f in frames] == [1, 3] and decoder.bad_frames == 1
    # a frame cut short swallows the next one until the wait for its bytes is given up
    decoder = FrameDecoder()
    long_frame = encode_frame(MessageType.RUN_REPLY, 9, bytes(40))
    assert decoder.feed(long_frame[:10] + good[3]) == [] and decoder.bytes_wanted() == 52 - 26
    assert [f.seq for f in decoder.discard_partial()] == [4]
    # a length beyond the limit, or one that fails its check, is refused at once
    decoder = FrameDecoder(max_payload=8)
    assert [f.seq for f in decoder.feed(encode_frame(1, 1, bytes(9)) + good[0])] == [1]
    damaged_length = bytearray(encode_frame(1, 2, bytes(60)))
    damaged_length[4] ^= 0x04
    decoder = FrameDecoder()
    assert [f.seq for f in decoder.feed(bytes(damaged_length[:20]) + good[2])] == [3] and decoder.bad_frames == 1


frames_strategy = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40)), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=st.lists(st.binary(max_size=30), min_size=7, max_size=7), frames=frames_strategy,
       cuts=st.lists(st.integers(1, 64), max_size=20))
def test_decoder_fuzz_finds_every_frame_in_noise(noise: list[bytes], frames: list[tuple[int, int, bytes]],
                                                 cuts: list[int]) -> None:
    """Frames between arbitrary noise, fed in arbitrary pieces: each frame comes out, in order, intact."""
    stream = noise[0] + b"".join(encode_frame(t, s, p) + noise[i + 1] for i, (t, s, p) in enumerate(frames))
    decoder = FrameDecoder(max_payload=64)
    got: list[Frame] = []
    pos = 0
    for cut in cuts:
        got += decoder.feed(stream[pos: pos + cut])
        pos += cut
    got += decoder.feed(stream[pos:])
    for _ in range(len(stream) + 1):  # the end of the stream: give up partial frames one by one
        got += decoder.discard_partial()
    for frame in got:  # nothing comes out that was not a whole frame with its CRC
        assert encode_frame(frame.type, frame.seq, frame.payload) in stream
    wanted = [Frame(t, s, p) for t, s, p in frames]
    it = iter(got)
    assert all(any(f == w for f in it) for w in wanted), "a frame was lost"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_decoder_fuzz_garbage_never_raises_or_grows(data: bytes) -> None:
    decoder = FrameDecoder(max_payload=32)
    for frame in decoder.feed(data):
        assert len(frame.payload) <= 32
    assert decoder.pending_bytes <= 8 + 32 + 4
    assert 1 <= decoder.bytes_wanted() <= 8 + 32 + 4


def test_hello_with_wrong_model_is_refused() -> None:
    model = coverage_model()
    other = model_hello(model, target="t", board="b", clock_hz=1)
    wrong = Hello(**{**other.__dict__, "model_hash": "ab" * 32})
    from edgejpq.serial.validate import check_hello

    with pytest.raises(EdgejpqError, match=r"runs model abababababababab .* model file is " + model.short_hash):
        check_hello(model, wrong, "port X")
    bad_shape = Hello(**{**other.__dict__, "input": TensorSpec((1, 2, 3), 1.0, 0)})
    with pytest.raises(EdgejpqError, match="bug in edgejpq"):
        check_hello(model, bad_shape, "port X")


# --------------------------------------------------------------------------- ports that misbehave


def test_port_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "m.ejq"
    save_model(coverage_model(), path)
    start = time.monotonic()
    result = CliRunner().invoke(app, ["validate", str(path), "--port", "/dev/ttyEJQ-none"])
    assert result.exit_code == 2 and "port /dev/ttyEJQ-none: cannot open it" in result.output
    assert "Traceback" not in result.output and time.monotonic() - start < 10


class _Peer:
    """A TCP peer that accepts one connection and then stays silent or talks nonsense."""

    def __init__(self, talk: bytes = b"", repeat: bool = False) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(talk, repeat), daemon=True)
        self.thread.start()

    def _serve(self, talk: bytes, repeat: bool) -> None:
        self.server.settimeout(5)
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            while not self.stop.is_set():
                if talk:
                    try:
                        conn.sendall(talk)
                    except OSError:
                        return
                    if not repeat:
                        talk = b""
                time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(timeout=2)


@pytest.mark.parametrize("talk", [b"", bytes(random.Random(0).randrange(256) for _ in range(997)) + b"EJ\x81\x01\xff"])
def test_silent_or_garbling_peer_fails_in_bounded_time(talk: bytes, tmp_path: Path) -> None:
    path = tmp_path / "m.ejq"
    save_model(coverage_model(), path)
    peer = _Peer(talk, repeat=True)
    try:
        start = time.monotonic()
        result = CliRunner().invoke(app, ["validate", str(path), "--port", peer.url, "--timeout", "0.2",
                                          "--retries", "2"])
        elapsed = time.monotonic() - start
    finally:
        peer.close()
    assert result.exit_code == 2, result.output
    assert "no valid answer to HELLO (seq 1) after 3 attempt(s)" in result.output
    assert "Traceback" not in result.output
    assert elapsed < 5


# --------------------------------------------------------------------------- the real firmware in QEMU


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[QuantizedModel, Path]:
    """A small MLP trained briefly on digits, 8-bit, exported (what a user would validate)."""
    import torch

    from edgejpq.data import calibration_subset, load_dataset
    from edgejpq.graph import build_float_graph
    from edgejpq.plan import load_plan
    from edgejpq.quant.integerize import export_model
    from edgejpq.train import train_float
    from edgejpq.zoo import build_model

    torch.manual_seed(0)
    ds = load_dataset("digits")
    net = build_model("zoo:mlp", ds.input_shape, ds.num_classes)
    train_float(net, ds, epochs=3, lr=3e-3, seed=0)
    graph = build_float_graph(net, ds.input_shape)
    model, _ = export_model(graph, load_plan("uniform:8", graph), calibration_subset(ds, 300), name="digits")
    path = tmp_path_factory.mktemp("digits") / "digits.ejq"
    save_model(model, path)
    return model, path


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory):
    """The coverage model (every op) with the serial harness for the Cortex-M4 (mps2-an386), built once."""
    _need_tools()
    model = coverage_model()
    root = tmp_path_factory.mktemp("serial_fw")
    target = load_target("cortex-m4")
    fw = build_qemu(model, generate_sources(model, root / "src", kernels=target.kernels), root / "build", target,
                    serial=True)
    return model, fw


def _inputs(model: QuantizedModel, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *model.input_info.shape), dtype=np.int8)


def test_validate_qemu_cli_digits_bit_exact(digits_model: tuple[QuantizedModel, Path], tmp_path: Path) -> None:
    """`edgejpq validate --qemu` end to end: build, QEMU with its UART on a socket, pyserial, bit-exact."""
    _need_tools()
    from edgejpq.data import load_dataset
    from edgejpq.quant.integerize import integer_logits

    model, path = digits_model
    n = 60
    result = CliRunner().invoke(app, ["validate", str(path), "--qemu", "--target", "cortex-m4", "--data", "digits",
                                      "--limit", str(n), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["bit_exact"] is True and payload["samples"] == n and payload["mismatched_samples"] == 0
    ds = load_dataset("digits")
    reference_accuracy = float((integer_logits(model, ds.x_test[:n]).argmax(axis=1) == ds.y_test[:n]).mean())
    assert payload["accuracy"] == pytest.approx(reference_accuracy) and reference_accuracy > 0.5
    assert payload["hash"] == model.content_hash and payload["board"] == "qemu:mps2-an386"
    # QEMU has no cycle counter: no cycles, exact instructions from the plugin instead
    assert payload["cycles_per_inference"] is None and payload["instructions_per_inference"] > 100
    assert payload["cycles_estimate_per_inference"] > payload["instructions_per_inference"]  # loads cost 2 on an M4
    assert payload["round_trip_ms_per_sample"] > 0 and payload["link"]["resends"] == 0
    assert payload["port"].startswith("socket://127.0.0.1:")


def test_validate_qemu_matches_semihosting_instruction_counts(digits_model: tuple[QuantizedModel, Path],
                                                              tmp_path: Path) -> None:
    """Same bytes as the reference; the serial firmware's inference costs what `emulate --qemu` counts."""
    _need_tools()
    from edgejpq.emulate.qemu import emulate_qemu

    model, _ = digits_model
    target = load_target("cortex-m4")
    x = _inputs(model, 6)
    result = validate_qemu(model, x, tmp_path, target)
    assert result.bit_exact and np.array_equal(result.outputs, predict(model, x).reshape(len(x), -1))
    emulated = emulate_qemu(model, x, tmp_path / "emulate", target)
    # the same model code between the same markers; the harnesses' call sites differ by an instruction or two
    assert abs(result.instructions_per_inference - emulated.instructions_per_inference) <= 4


def _validate_through(fw_fixture, fault, *, samples: int = FAULT_SAMPLES, retries: int = 3):
    model, fw = fw_fixture
    x = _inputs(model, samples, seed=1)
    with QemuSerial(fw) as qemu, FaultProxy(qemu.port, fault) as proxy:
        link = qemu.connect(url=proxy.url, timeout=5.0, retries=retries)
        hello = link.hello()  # a generous first wait: QEMU may take a while to start on a busy machine
        link.timeout = FAST_TIMEOUT
        start = time.monotonic()
        try:
            result = validate_link(link, model, x, hello=hello)
        finally:
            elapsed = time.monotonic() - start
    assert elapsed < 10 * FAST_TIMEOUT * (retries + 1)
    return x, result, proxy


# Sample i is the RUN request (and answer) with sequence number i + 2 (1 is the HELLO); the faults hit
# the first transmission of the named sequence numbers, so each resend passes.
FAULTS = {
    "corrupt request": (on_frame(TO_FIRMWARE, {4}, flip(9)), "damaged_reports"),
    "corrupt request length": (on_frame(TO_FIRMWARE, {3}, flip(5)), "damaged_reports"),
    "corrupt answer length": (on_frame(TO_HOST, {7}, flip(4)), "bad_frames"),
    "drop request": (on_frame(TO_FIRMWARE, {5}, drop), "timeouts"),
    "truncate request": (on_frame(TO_FIRMWARE, {3, 6}, truncate(20)), "timeouts"),
    "reorder request bytes": (on_frame(TO_FIRMWARE, {7}, swap(12)), "damaged_reports"),
    "corrupt answer": (on_frame(TO_HOST, {4}, flip(11)), "bad_frames"),
    "truncate answer": (on_frame(TO_HOST, {5}, truncate(9)), "timeouts"),
    "drop answer": (on_frame(TO_HOST, {6}, drop), "timeouts"),
    "reorder answer bytes": (on_frame(TO_HOST, {3}, swap(6)), "bad_frames"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_retried_and_still_bit_exact(firmware, name: str) -> None:
    fault, counter = FAULTS[name]
    x, result, proxy = _validate_through(firmware, fault)
    model, _ = firmware
    assert result.bit_exact, name
    assert np.array_equal(result.outputs, predict(model, x).reshape(len(x), -1))
    assert result.stats["resends"] >= 1 and result.stats[counter] >= 1, result.stats


def test_late_answers_are_never_taken_for_new_ones(firmware) -> None:
    """Delay one answer past the timeout: the resend's answer is used, the late one dropped by its seq."""
    pending: list[bytes] = []

    def late(direction: str, index: int, frame: bytes) -> bytes:
        if direction == TO_HOST and frame[2] == MessageType.RUN_REPLY and frame[3] == 3:
            if not pending:
                pending.append(frame)  # held back
                return b""
            return frame + pending.pop()  # the answer to the resend, then the stale one
        return frame

    x, result, _ = _validate_through(firmware, late)
    assert result.bit_exact and result.stats["timeouts"] >= 1 and result.stats["stale_frames"] >= 1


def test_persistent_corruption_is_a_clear_error_in_bounded_time(firmware) -> None:
    fault = on_frame(TO_FIRMWARE, {4}, flip(8), every=True)
    with pytest.raises(EdgejpqError, match=r"no valid answer to RUN \(seq 4, sample 2\) after 3 attempt\(s\).*"
                                           r"the firmware reports a frame arrived with a wrong CRC"):
        _validate_through(firmware, fault, retries=2)


def test_board_reset_mid_stream_is_an_error(firmware) -> None:
    """A RESET slipped in before sample 4: the firmware restarts and announces itself; never a silent pass."""
    reset = encode_frame(MessageType.RESET, 200)
    fault = on_frame(TO_FIRMWARE, {6}, lambda frame: reset + frame)
    with pytest.raises(EdgejpqError, match=r"board restarted .* \(at sample 4 of 8\)"):
        _validate_through(firmware, fault)


def test_reset_hello_and_errors_of_the_firmware(firmware) -> None:
    model, fw = firmware
    with QemuSerial(fw) as qemu:
        link: SerialLink = qemu.connect(timeout=1.0, retries=1)
        hello = link.hello()
        assert hello.model_hash == model.content_hash and not hello.boot and hello.version == 1
        assert hello.target == "cortex-m4" and hello.board == "qemu:mps2-an386" and not hello.cycle_counter
        boot = link.reset()
        assert boot is not None and boot.boot and boot.model_hash == model.content_hash
        x = _inputs(model, 1)
        assert link.run(x[0].tobytes(), model.output_info.size).output == predict(model, x).tobytes()
        with pytest.raises(EdgejpqError, match="must be 126 bytes"):
            link.run(x[0].tobytes()[:5], model.output_info.size)
        with pytest.raises(EdgejpqError, match="message type 0x42 is unknown"):
            link.request(0x42, b"", MessageType.RUN_REPLY)
        # an oversized frame is refused by its length at once, and the firmware stays usable
        link._write(MAGIC + bytes((MessageType.RUN, 9)) + struct.pack("<HH", MAX_PAYLOAD, MAX_PAYLOAD ^ 0xFFFF))
        refusal = link._read_frame(time.monotonic() + 2.0)
        assert refusal is not None and refusal.type == MessageType.ERROR
        assert refusal.payload[0] == ErrorCode.TOO_LONG and refusal.seq == 9
        assert link.hello().model_hash == model.content_hash
        # noise on the line, ending inside a header: the firmware resynchronises on the next frame
        noise = bytes(random.Random(1).randrange(256) for _ in range(3000)) + MAGIC + b"\x01\x05"
        link._write(noise)
        assert link.hello().model_hash == model.content_hash
        assert link.run(x[0].tobytes(), model.output_info.size).output == predict(model, x).tobytes()


def test_cli_port_with_wrong_model_file(firmware, digits_model: tuple[QuantizedModel, Path]) -> None:
    """--port against firmware of another model: a clear error naming both hashes."""
    model, fw = firmware
    _, digits_path = digits_model
    with QemuSerial(fw) as qemu:
        result = CliRunner().invoke(app, ["validate", str(digits_path), "--port", qemu.url, "--timeout", "1"])
    assert result.exit_code == 2, result.output
    assert f"runs model {model.short_hash}" in result.output and "Traceback" not in result.output


def _qemu_processes_running(elf: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(elf).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_qemu_is_stopped_when_validation_fails(firmware, digits_model, tmp_path: Path) -> None:
    model, fw = firmware
    digits, _ = digits_model
    x = _inputs(digits, 2)
    with pytest.raises(EdgejpqError, match="runs model"):
        validate_qemu(digits, x, tmp_path, fw.target, firmware=fw)
    assert _qemu_processes_running(fw.elf) == []


@pytest.mark.parametrize("target_name", ["cortex-m3", "cortex-m33"])
def test_other_machines_uart_and_cores(target_name: str, digits_model: tuple[QuantizedModel, Path],
                                       tmp_path: Path) -> None:
    """The CMSDK UART of mps2-an385 (Cortex-M3, portable kernels) and of mps2-an505 (Cortex-M33, secure alias)."""
    _need_tools()
    model, _ = digits_model
    x = _inputs(model, 3)
    target = load_target(target_name)
    result = validate_qemu(model, x, tmp_path, target, timeout=5.0, count_instructions=False)
    assert result.bit_exact and result.hello.board == f"qemu:{target.qemu.machine}"
    assert result.hello.target == target_name and result.cycles is None


# --------------------------------------------------------------------------- flashing (ROM bootloader, AN3155)


def _flash(port, image: bytes = bytes(range(256)) * 2 + b"\x01\x02\x03", **kwargs):
    from edgejpq.serial.flash import flash_stm32

    return flash_stm32(image, port, port="fake", chip="STM32F446RE", address=0x08000000, **kwargs)


def test_flash_follows_an3155() -> None:
    from fake_stm32 import ACK, FakeStm32Port

    image = bytes(range(256)) * 2 + b"\x01\x02\x03"
    port = FakeStm32Port()
    steps: list[str] = []
    result = _flash(port, image, on_progress=lambda step, done, total: steps.append(step))
    assert result.chip_id == 0x421 and result.bootloader_version == 0x31 and result.verified and result.started
    assert port.erased and port.jumped_to == 0x08000000
    assert bytes(port.memory.get(0x08000000 + i, 0xFF) for i in range(len(image))) == image
    sent = bytes(port.received)
    assert sent.startswith(b"\x7f\x00\xff\x02\xfd")  # sync, GET, GET ID
    assert b"\x44\xbb\xff\xff\x00" in sent  # extended erase, global
    assert b"\x31\xce\x08\x00\x01\x00\x09" in sent  # WRITE MEMORY at 0x08000100, address XOR 0x09
    # the 3-byte tail is padded to a word with 0xFF: N = 3, data, checksum
    assert b"\x03\x01\x02\x03\xff" + bytes((3 ^ 1 ^ 2 ^ 3 ^ 0xFF,)) in sent
    assert port.commands == [0x00, 0x02, 0x44, 0x31, 0x31, 0x31, 0x11, 0x11, 0x11, 0x21]
    assert sent.endswith(b"\x21\xde\x08\x00\x00\x00\x08") and ACK == 0x79
    assert steps[0] == "erasing" and "verifying" in steps


@pytest.mark.parametrize("knobs, message", [
    ({"silent": True}, "does not answer the sync byte 0x7F"),
    ({"chip_id": 0x451}, r"product ID 0x451 \(STM32F76xxx/77xxx\), but the board's STM32F446RE has 0x421"),
    ({"nack_command": 0x31}, r"refused \(NACK\) write memory at 0x08000000"),
    ({"nack_command": 0x44}, r"refused \(NACK\) erase"),
    ({"corrupt_read_at": 0x08000105}, "verify failed at 0x08000105: read 0x04, wrote 0x05"),
])
def test_flash_errors_are_clear(knobs: dict, message: str) -> None:
    from fake_stm32 import FakeStm32Port

    start = time.monotonic()
    with pytest.raises(EdgejpqError, match=message):
        _flash(FakeStm32Port(**knobs))
    assert time.monotonic() - start < 10


def test_flash_cli_refuses_what_cannot_work(tmp_path: Path) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x00" * 16)
    result = CliRunner().invoke(app, ["flash", str(image), "--board", "no-such-board", "--port", "/dev/null"])
    assert result.exit_code == 2 and "unknown board 'no-such-board'" in result.output
    result = CliRunner().invoke(app, ["flash", str(tmp_path / "none.elf"), "--board", "nucleo-f446re", "--port",
                                      "/dev/ttyEJQ-none"])
    assert result.exit_code == 2 and "no such firmware file" in result.output
    result = CliRunner().invoke(app, ["flash", str(image), "--board", "nucleo-f446re", "--port", "/dev/ttyEJQ-none"])
    assert result.exit_code == 2 and "port /dev/ttyEJQ-none: cannot open it" in result.output


def test_serial_board_project_builds(digits_model: tuple[QuantizedModel, Path], tmp_path: Path) -> None:
    """The serial harness on a real board: the NUCLEO-F446RE project's USART and cycle counter, -Werror."""
    _need_tools()
    import subprocess

    from codegen.boards import generate_serial_board_project, load_board

    model, _ = digits_model
    project = generate_serial_board_project(model, "nucleo-f446re", tmp_path / "f446")
    main = (project.out_dir / "main.c").read_text()
    assert "#define EJQ_MSG_RUN 0x02u" in main and '#include "ejq_board.h"' in main
    result = subprocess.run(["make", "-C", str(project.out_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # the HELLO it embeds names the board and its real (reset) clock, not the target's nominal one
    spec = load_board("nucleo-f446re")
    hello = model_hello(model, target=project.target, board="nucleo-f446re", clock_hz=spec.clock.hz)
    assert ", ".join(f"0x{b:02x}" for b in encode_hello(hello)[:8]) in main.lower()
    # and it talks: the F446 image on QEMU's STM32F405 machine (same USART2 at 0x40004400), through pyserial
    from edgejpq.data import load_dataset
    from edgejpq.quant.integerize import quantize_input

    x = quantize_input(model, load_dataset("digits").x_test[:5])
    with QemuSerial.board_image(project.elf, "netduinoplus2", uart_index=1) as qemu:
        result = validate_link(qemu.connect(timeout=2.0), model, x)
    assert result.bit_exact and result.hello.board == "nucleo-f446re" and result.hello.clock_hz == spec.clock.hz
    assert result.cycles is None  # QEMU's DWT does not count: flagged, never reported as 0 cycles
    # and the same image goes through the ROM bootloader (the fake one) as `edgejpq flash` sends it
    from fake_stm32 import FakeStm32Port
    from edgejpq.serial.flash import firmware_image, flash_stm32

    image = firmware_image(project.elf)
    reset = struct.unpack_from("<I", image, 4)[0]
    assert reset & 1 and spec.memory.flash.base <= reset < spec.memory.flash.base + len(image)
    port = FakeStm32Port()
    flash_stm32(image, port, port="fake", chip=spec.chip, address=spec.memory.flash.base)
    written = bytes(port.memory.get(spec.memory.flash.base + i, 0xFF) for i in range(len(image)))
    assert written == image and port.jumped_to == spec.memory.flash.base
