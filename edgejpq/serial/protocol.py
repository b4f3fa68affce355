"""The edgejpq serial protocol, version 1: frames, messages and a resynchronising frame decoder.

One frame (all integers little-endian; docs/serial-protocol.md is the full description):

    offset  bytes  field
    0       2      magic b"EJ" (0x45 0x4A)
    2       1      message type
    3       1      sequence number (a reply echoes its request's; 0 = not asked for)
    4       2      payload length N (at most the firmware's max_payload, announced in HELLO)
    6       2      N ^ 0xFFFF: a damaged length is seen at once, before waiting for its payload
    8       N      payload
    8 + N   4      CRC-32 of bytes 2 .. 8 + N (IEEE 802.3, reflected: Python's zlib.crc32)

The firmware harness (firmware_templates/boards/serial/harness.c.j2) is rendered with the
constants of this module and with the HELLO payload encoded here, so both ends share one layout.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from edgejpq.errors import EdgejpqError

if TYPE_CHECKING:
    from edgejpq.artifact import QuantizedModel

PROTOCOL_VERSION = 1
MAGIC = b"EJ"
HEADER_BYTES = 8  # magic, type, seq, length, length check
CRC_BYTES = 4
FRAME_OVERHEAD = HEADER_BYTES + CRC_BYTES
MAX_PAYLOAD = 0xFFFF
BOOT_SEQ = 0  # the HELLO a firmware sends by itself at start-up carries sequence number 0


class MessageType(enum.IntEnum):
    HELLO = 0x01
    RUN = 0x02
    RESET = 0x03
    HELLO_REPLY = 0x81
    RUN_REPLY = 0x82
    RESET_REPLY = 0x83
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    """The `code` of an ERROR message; `detail` says more (see docs/serial-protocol.md)."""

    BAD_CRC = 1  # detail: the CRC the frame carried
    TOO_LONG = 2  # detail: the announced payload length
    UNKNOWN_TYPE = 3  # detail: the message type
    BAD_LENGTH = 4  # detail: the payload length the message needs
    INVOKE_FAILED = 5  # detail: the model's status code
    FAULT = 6  # detail: the faulting program counter (0: an unexpected interrupt)
    BAD_HEADER = 7  # detail: the length and its check as received (length | check << 16)


HELLO_FLAG_CYCLE_COUNTER = 0x0001  # RUN replies carry cycles from a running cycle counter (DWT CYCCNT)
HELLO_FLAG_BOOT = 0x0002  # sent by the firmware at start-up, not in answer to a HELLO request
RUN_FLAG_CYCLES_VALID = 0x0001
HELLO_FLAGS_OFFSET = 2  # byte offset of the flags inside the HELLO payload (the firmware sets them)
RUN_REPLY_HEADER = struct.Struct("<II")  # flags, cycles; the output tensor follows
ERROR_PAYLOAD = struct.Struct("<BBHI")  # code, seq of the frame at fault, reserved, detail
_HELLO_FIXED = struct.Struct("<HHH32sI")  # version, flags, max payload, model hash, clock Hz
_TENSOR = struct.Struct("<HHHfb")  # height, width, channels, scale (float32), zero point


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected, init and final xor 0xFFFFFFFF), as zlib computes it."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes

    @property
    def name(self) -> str:
        try:
            return MessageType(self.type).name
        except ValueError:
            return f"type 0x{self.type:02X}"


def encode_frame(message_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    if not 0 <= seq <= 0xFF or not 0 <= message_type <= 0xFF:
        raise ValueError(f"type {message_type} and seq {seq} must be bytes")
    if len(payload) > MAX_PAYLOAD:
        raise EdgejpqError(f"a payload of {len(payload)} bytes does not fit one frame (at most {MAX_PAYLOAD})")
    body = bytes((message_type, seq)) + struct.pack("<HH", len(payload), len(payload) ^ 0xFFFF) + payload
    return MAGIC + body + struct.pack("<I", crc32(body))


class FrameDecoder:
    """Frames out of a byte stream that may be garbled, truncated or shifted.

    `feed` returns every complete frame with a correct CRC. A frame whose length fails its check
    or exceeds `max_payload`, or whose CRC is wrong, is dropped by skipping one byte past its magic and
    scanning again, so a frame that starts inside the damaged one is still found. `discard_partial`
    (called when a wait times out) drops a frame the stream stopped in the middle of in the same
    way, so a damaged length field can never make the decoder wait for bytes that will not come.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self.discarded_bytes = 0
        self.bad_frames = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def bytes_wanted(self) -> int:
        """How many more bytes complete the frame the buffer starts with (a header's worth if none)."""
        buf = self._buffer
        if len(buf) < HEADER_BYTES:
            return HEADER_BYTES - len(buf)
        length = buf[4] | (buf[5] << 8)
        return max(1, HEADER_BYTES + min(length, self.max_payload) + CRC_BYTES - len(buf))

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def discard_partial(self) -> list[Frame]:
        """Give up on the frame the buffer starts with (skip its magic); the frames found in what follows."""
        if self._buffer:
            self._skip(1 if self._buffer[:1] == MAGIC[:1] else len(self._buffer))
        return self.feed(b"")

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self.discarded_bytes += count

    def _next(self) -> Optional[Frame]:
        buf = self._buffer
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                # keep a last byte that may be the first half of the magic
                keep = 1 if buf[-1:] == MAGIC[:1] else 0
                self._skip(len(buf) - keep)
                return None
            if start:
                self._skip(start)
            if len(buf) < HEADER_BYTES:
                return None
            length = buf[4] | (buf[5] << 8)
            if (buf[6] | (buf[7] << 8)) != length ^ 0xFFFF or length > self.max_payload:
                self.bad_frames += 1
                self._skip(1)
                continue
            end = HEADER_BYTES + length + CRC_BYTES
            if len(buf) < end:
                return None
            body = bytes(buf[2: HEADER_BYTES + length])
            (carried,) = struct.unpack_from("<I", buf, HEADER_BYTES + length)
            if crc32(body) != carried:
                self.bad_frames += 1
                self._skip(1)
                continue
            del buf[:end]
            return Frame(type=body[0], seq=body[1], payload=body[HEADER_BYTES - 2:])


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class TensorSpec:
    """Shape (H, W, C) and int8 quantization of the model's input or output, as HELLO states them."""

    shape: tuple[int, int, int]
    scale: float  # as float32
    zero_point: int

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def describe(self) -> str:
        return f"{'×'.join(map(str, self.shape))} int8 (scale {self.scale:.6g}, zero point {self.zero_point})"


@dataclass(frozen=True)
class Hello:
    """What the firmware says about itself."""

    version: int
    flags: int
    max_payload: int
    model_hash: str  # sha256 content hash of the .ejq file, hex
    clock_hz: int
    input: TensorSpec
    output: TensorSpec
    target: str
    board: str
    firmware: str  # the edgejpq version that generated it

    @property
    def cycle_counter(self) -> bool:
        return bool(self.flags & HELLO_FLAG_CYCLE_COUNTER)

    @property
    def boot(self) -> bool:
        return bool(self.flags & HELLO_FLAG_BOOT)


def _short_string(text: str, what: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise EdgejpqError(f"{what} {text[:40]!r}… is longer than 255 bytes")
    return bytes((len(data),)) + data


def encode_hello(hello: Hello) -> bytes:
    """The HELLO payload (the firmware embeds this with flags 0 and sets the flags at run time)."""
    fixed = _HELLO_FIXED.pack(hello.version, hello.flags, hello.max_payload, bytes.fromhex(hello.model_hash),
                              hello.clock_hz)
    tensors = b"".join(_TENSOR.pack(*t.shape, t.scale, t.zero_point) for t in (hello.input, hello.output))
    return (fixed + tensors + _short_string(hello.target, "target name") + _short_string(hello.board, "board name")
            + _short_string(hello.firmware, "version"))


def decode_hello(payload: bytes, where: str) -> Hello:
    """A HELLO payload, or an EdgejpqError naming `where` and the byte at fault."""
    if len(payload) < 2:
        raise EdgejpqError(f"{where}: HELLO of {len(payload)} bytes is too short to hold a protocol version")
    (version,) = struct.unpack_from("<H", payload)
    if version != PROTOCOL_VERSION:
        raise EdgejpqError(f"{where}: the firmware speaks serial protocol version {version}, this edgejpq speaks "
                           f"{PROTOCOL_VERSION}: regenerate and flash the firmware with this edgejpq version")
    fixed_end = _HELLO_FIXED.size + 2 * _TENSOR.size
    if len(payload) < fixed_end:
        raise EdgejpqError(f"{where}: HELLO of {len(payload)} bytes is too short (at least {fixed_end + 3})")
    _, flags, max_payload, digest, clock_hz = _HELLO_FIXED.unpack_from(payload)
    tensors = []
    for i in range(2):
        h, w, c, scale, zero_point = _TENSOR.unpack_from(payload, _HELLO_FIXED.size + i * _TENSOR.size)
        tensors.append(TensorSpec((h, w, c), scale, zero_point))
    strings = []
    pos = fixed_end
    for what in ("target name", "board name", "version"):
        if pos >= len(payload) or pos + 1 + payload[pos] > len(payload):
            raise EdgejpqError(f"{where}: HELLO ends inside its {what} (byte {pos} of {len(payload)})")
        strings.append(payload[pos + 1: pos + 1 + payload[pos]].decode(errors="replace"))
        pos += 1 + payload[pos]
    return Hello(version=version, flags=flags, max_payload=max_payload, model_hash=digest.hex(), clock_hz=clock_hz,
                 input=tensors[0], output=tensors[1], target=strings[0], board=strings[1], firmware=strings[2])


@dataclass(frozen=True)
class RunReply:
    output: bytes
    cycles: Optional[int]  # None when the core has no running cycle counter


def decode_run_reply(payload: bytes, output_size: int, where: str) -> RunReply:
    if len(payload) != RUN_REPLY_HEADER.size + output_size:
        raise EdgejpqError(f"{where}: RUN reply of {len(payload)} bytes, expected {RUN_REPLY_HEADER.size} + "
                           f"{output_size} output bytes")
    flags, cycles = RUN_REPLY_HEADER.unpack_from(payload)
    return RunReply(output=bytes(payload[RUN_REPLY_HEADER.size:]),
                    cycles=cycles if flags & RUN_FLAG_CYCLES_VALID else None)


@dataclass(frozen=True)
class ErrorReply:
    code: int
    seq: int
    detail: int

    def describe(self) -> str:
        texts = {ErrorCode.BAD_CRC: f"a frame arrived with a wrong CRC (it carried 0x{self.detail:08X})",
                 ErrorCode.TOO_LONG: f"a frame announced {self.detail} payload bytes, more than it can hold",
                 ErrorCode.UNKNOWN_TYPE: f"message type 0x{self.detail:02X} is unknown to it",
                 ErrorCode.BAD_LENGTH: f"the message's payload must be {self.detail} bytes",
                 ErrorCode.INVOKE_FAILED: f"the model's invoke returned status {self.detail}",
                 ErrorCode.FAULT: f"it faulted at pc=0x{self.detail:08X}",
                 ErrorCode.BAD_HEADER: f"a frame header arrived damaged (length field 0x{self.detail:08X})"}
        try:
            return texts[ErrorCode(self.code)]
        except ValueError:
            return f"error code {self.code} (detail {self.detail})"


def decode_error(payload: bytes, where: str) -> ErrorReply:
    if len(payload) != ERROR_PAYLOAD.size:
        raise EdgejpqError(f"{where}: ERROR message of {len(payload)} bytes, expected {ERROR_PAYLOAD.size}")
    code, seq, _reserved, detail = ERROR_PAYLOAD.unpack(payload)
    return ErrorReply(code=code, seq=seq, detail=detail)


def template_constants() -> dict[str, Any]:
    """The protocol's numbers for the firmware template (one source for both ends)."""
    return {"version": PROTOCOL_VERSION, "magic": tuple(MAGIC), "header_bytes": HEADER_BYTES,
            "crc_bytes": CRC_BYTES, "types": {t.name: int(t) for t in MessageType},
            "errors": {e.name: int(e) for e in ErrorCode}, "hello_flag_cycle_counter": HELLO_FLAG_CYCLE_COUNTER,
            "hello_flag_boot": HELLO_FLAG_BOOT, "hello_flags_offset": HELLO_FLAGS_OFFSET,
            "run_flag_cycles_valid": RUN_FLAG_CYCLES_VALID, "boot_seq": BOOT_SEQ}


def firmware_max_payload(input_size: int) -> int:
    """The largest payload the harness accepts: a RUN request's input tensor (and room for small messages)."""
    return max(int(input_size), 64)


def model_hello(model: "QuantizedModel", *, target: str, board: str, clock_hz: int, flags: int = 0) -> Hello:
    """The HELLO the firmware of `model` sends (what the harness embeds, and what validate expects)."""
    from edgejpq import __version__

    def spec(info: Any) -> TensorSpec:
        (scale,) = struct.unpack("<f", struct.pack("<f", info.scale))
        return TensorSpec(tuple(info.shape), scale, int(info.zero_point))  # type: ignore[arg-type]

    return Hello(version=PROTOCOL_VERSION, flags=flags, max_payload=firmware_max_payload(model.input_info.size),
                 model_hash=model.content_hash, clock_hz=int(clock_hz), input=spec(model.input_info),
                 output=spec(model.output_info), target=target, board=board, firmware=__version__)
