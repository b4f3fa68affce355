"""A serial link to an edgejpq firmware: requests with bounded waits, safe retries and sequence numbers.

Every request gets a fresh sequence number (1..255, then 1 again) and waits at most `timeout`
seconds plus the time its bytes take on the wire. HELLO and RUN are idempotent, so they are resent
(with the same sequence number) when the answer does not come in time or when the firmware says a
frame arrived damaged; an answer carrying another sequence number is a late answer to an earlier
request and is dropped, never taken for the current one. RESET is sent once. A HELLO with the boot
flag while a RUN is waiting means the board restarted: that is an error, never retried silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from edgejpq.errors import EdgejpqError
from edgejpq.serial.protocol import (BOOT_SEQ, FRAME_OVERHEAD, RUN_REPLY_HEADER, ErrorCode,
                                     ErrorReply, Frame, FrameDecoder, Hello, MessageType, RunReply, decode_error,
                                     decode_hello, decode_run_reply, encode_frame)

DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_SECONDS = 2.0
DEFAULT_RETRIES = 3
POLL_SECONDS = 0.05  # the port's read timeout: how often a wait checks its deadline
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
SOCKET_CONNECT_SECONDS = 10.0  # how long a socket:// port may refuse connections (an emulator still starting)


class BoardResetError(EdgejpqError):
    """The firmware sent its start-up HELLO while an answer was awaited: the board restarted."""


@dataclass
class LinkStats:
    """What happened on the wire (for the summary and the tests)."""

    requests: int = 0
    resends: int = 0
    timeouts: int = 0
    damaged_reports: int = 0  # ERROR frames: the firmware received a damaged or oversized frame
    stale_frames: int = 0  # answers to earlier requests (or repeated answers) dropped
    bytes_sent: int = 0
    bytes_received: int = 0
    discarded_bytes: int = 0  # bytes the decoder skipped (noise, damaged frames)
    bad_frames: int = 0  # frames the decoder dropped for a wrong CRC or length

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class SerialLink:
    """An open port (any pyserial object or URL) speaking the edgejpq protocol."""

    port: Any  # a pyserial SerialBase (or anything with read/write/flush/reset_input_buffer/close)
    url: str  # the port's device name or pyserial URL
    where: str  # how messages name the port
    baud: int = DEFAULT_BAUD
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    retries: int = DEFAULT_RETRIES
    stats: LinkStats = field(default_factory=LinkStats)
    max_payload: int = 0xFFFF
    _seq: int = 0
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _queue: list[Frame] = field(default_factory=list)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, url: str, *, baud: int = DEFAULT_BAUD, timeout: float = DEFAULT_TIMEOUT_SECONDS,
             retries: int = DEFAULT_RETRIES) -> "SerialLink":
        """Open `url` (a device such as /dev/ttyACM0 or COM3, or a pyserial URL such as socket://HOST:PORT)."""
        try:
            import serial
        except ImportError:
            raise EdgejpqError("pyserial is not installed: pip install 'pyserial>=3.5,<4'") from None
        # A socket may not listen yet (QEMU starting in another terminal): retry it, bounded.
        deadline = time.monotonic() + (SOCKET_CONNECT_SECONDS if url.startswith("socket://") else 0.0)
        while True:
            try:
                port = serial.serial_for_url(url, baudrate=baud, timeout=POLL_SECONDS,
                                             write_timeout=max(timeout, 1.0))
                break
            except (serial.SerialException, ValueError, OSError) as exc:
                if time.monotonic() < deadline and not isinstance(exc, ValueError):
                    time.sleep(POLL_SECONDS)
                    continue
                raise EdgejpqError(f"port {url}: cannot open it ({exc}); list serial ports with "
                                   f"`python -m serial.tools.list_ports`, or give a pyserial URL such as "
                                   f"socket://127.0.0.1:PORT") from None
        return cls(port=port, url=url, where=f"port {url}", baud=baud, timeout=timeout, retries=retries)

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # closing a port that already failed must not hide the first error
            pass

    def __enter__(self) -> "SerialLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ bytes

    def _wire_seconds(self, nbytes: int) -> float:
        return nbytes * BITS_PER_BYTE / max(1, self.baud)

    def _write(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)  # bounded by the port's write_timeout (no flush: tcdrain has no timeout)
        except serial.SerialTimeoutException:
            raise EdgejpqError(f"{self.where}: writing {len(data)} bytes did not finish within "
                               f"{self.port.write_timeout:g} s (is the other end reading?)") from None
        except (serial.SerialException, OSError) as exc:
            raise EdgejpqError(f"{self.where}: the connection failed while writing ({exc})") from None
        self.stats.bytes_sent += len(data)

    def _read_frame(self, deadline: float) -> Optional[Frame]:
        """The next intact frame, or None at the deadline (a frame cut off there is given up)."""
        import serial

        while not self._queue:
            if time.monotonic() >= deadline:
                self._queue.extend(self._decoder.discard_partial())
                self._sync_decoder_stats()
                if self._queue:
                    break
                return None
            want = max(1, self._decoder.bytes_wanted())
            try:
                data = self.port.read(want)
            except (serial.SerialException, OSError) as exc:
                raise EdgejpqError(f"{self.where}: the connection failed while reading ({exc})") from None
            if data:
                self.stats.bytes_received += len(data)
                self._queue.extend(self._decoder.feed(data))
                self._sync_decoder_stats()
        return self._queue.pop(0)

    def _sync_decoder_stats(self) -> None:
        self.stats.discarded_bytes = self._decoder.discarded_bytes
        self.stats.bad_frames = self._decoder.bad_frames

    def drain(self, seconds: float = 0.0) -> None:
        """Forget everything received so far (and what arrives within `seconds`)."""
        deadline = time.monotonic() + seconds
        try:
            self.port.reset_input_buffer()
        except Exception:
            pass
        while seconds > 0 and self._read_frame(deadline) is not None:
            pass
        self._queue.clear()

    # ------------------------------------------------------------------ requests

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1  # 1..255: 0 is the start-up HELLO's
        return self._seq

    def request(self, message: int, payload: bytes, reply: int, *, reply_bytes: int = 0,
                idempotent: bool = True, what: str = "") -> Frame:
        """Send `message` and return the `reply` frame with its sequence number; bounded, retried if idempotent."""
        seq = self._next_seq()
        frame = encode_frame(message, seq, payload)
        name = message.name if isinstance(message, MessageType) else f"message type 0x{int(message):02X}"
        label = f"{name} (seq {seq}{', ' + what if what else ''})"
        attempts = 1 + (self.retries if idempotent else 0)
        wait = self.timeout + self._wire_seconds(len(frame) + reply_bytes + FRAME_OVERHEAD)
        self.stats.requests += 1
        seen: list[str] = []
        for attempt in range(attempts):
            if attempt:
                self.stats.resends += 1
            self._write(frame)
            deadline = time.monotonic() + wait
            while True:
                got = self._read_frame(deadline)
                if got is None:
                    self.stats.timeouts += 1
                    seen.append(f"attempt {attempt + 1}: no answer within {wait:.2f} s")
                    break
                if got.type == reply and got.seq == seq:
                    return got
                if got.type == MessageType.ERROR:
                    error = self._error(got)
                    if error.code in (ErrorCode.BAD_CRC, ErrorCode.TOO_LONG, ErrorCode.BAD_HEADER):
                        # a frame reached the firmware damaged: possibly this request, so send it again
                        self.stats.damaged_reports += 1
                        seen.append(f"attempt {attempt + 1}: the firmware reports {error.describe()}")
                        break
                    if error.code == ErrorCode.FAULT or error.seq == seq:
                        raise EdgejpqError(f"{self.where}: the firmware answered {label} with an error: "
                                           f"{error.describe()}")
                    self.stats.stale_frames += 1
                    continue
                if got.type == MessageType.HELLO_REPLY and got.seq == BOOT_SEQ and message != MessageType.HELLO:
                    raise BoardResetError(
                        f"{self.where}: the board restarted (it sent its start-up HELLO) while {label} awaited its "
                        f"answer: it may have crashed (watchdog, fault), lost power or been reset; nothing after "
                        f"this point was validated")
                self.stats.stale_frames += 1
        raise EdgejpqError(f"{self.where}: no valid answer to {label} after {attempts} attempt(s) "
                           f"({'; '.join(seen[-3:])}; {self.stats.bytes_received} bytes received in all, "
                           f"{self.stats.discarded_bytes} discarded): check the port, the baud rate "
                           f"({self.baud}) and that the board runs edgejpq's serial firmware")

    def _error(self, frame: Frame) -> ErrorReply:
        return decode_error(frame.payload, f"{self.where}: ERROR frame (seq {frame.seq})")

    def hello(self) -> Hello:
        """Ask the firmware who it is (after forgetting anything already received)."""
        self.drain()
        frame = self.request(MessageType.HELLO, b"", MessageType.HELLO_REPLY, reply_bytes=512)
        hello = decode_hello(frame.payload, f"{self.where}: HELLO")
        self.max_payload = hello.max_payload
        self._decoder.max_payload = max(hello.max_payload, RUN_REPLY_HEADER.size + hello.output.size, 512)
        return hello

    def run(self, input_bytes: bytes, output_size: int, what: str = "") -> RunReply:
        """One inference: the output tensor and the cycles it took (None without a cycle counter)."""
        if len(input_bytes) > self.max_payload:
            raise EdgejpqError(f"{self.where}: an input of {len(input_bytes)} bytes exceeds the firmware's "
                               f"{self.max_payload}-byte frames")
        frame = self.request(MessageType.RUN, input_bytes, MessageType.RUN_REPLY,
                             reply_bytes=RUN_REPLY_HEADER.size + output_size, what=what)
        return decode_run_reply(frame.payload, output_size, f"{self.where}: RUN reply (seq {frame.seq})")

    def reset(self, wait_boot: bool = True) -> Optional[Hello]:
        """Ask the firmware to reset itself; with `wait_boot`, return the start-up HELLO it sends after."""
        self.request(MessageType.RESET, b"", MessageType.RESET_REPLY, idempotent=False)
        if not wait_boot:
            return None
        deadline = time.monotonic() + self.timeout + self._wire_seconds(512)
        while True:
            got = self._read_frame(deadline)
            if got is None:
                raise EdgejpqError(f"{self.where}: the board did not announce itself within {self.timeout:g} s "
                                   f"after RESET")
            if got.type == MessageType.HELLO_REPLY and got.seq == BOOT_SEQ:
                return decode_hello(got.payload, f"{self.where}: start-up HELLO")
            self.stats.stale_frames += 1


__all__ = ["BITS_PER_BYTE", "BoardResetError", "DEFAULT_BAUD", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_SECONDS",
           "LinkStats", "SerialLink"]
