"""A TCP proxy between the host and firmware in QEMU that damages frames on purpose.

Both directions are split into frames (the streams entering the proxy are clean: the faults are
the proxy's own), and a `Fault` decides, frame by frame, what is forwarded instead: the frame,
nothing (dropped), a changed copy (corrupted, truncated, bytes swapped) or more frames (injected).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from edgejpq.serial.protocol import CRC_BYTES, HEADER_BYTES, MAGIC, MessageType

TO_FIRMWARE = "to_firmware"
TO_HOST = "to_host"

# (direction, index of the frame in that direction, its bytes) -> the bytes to forward
Fault = Callable[[str, int, bytes], bytes]


def no_fault(direction: str, index: int, frame: bytes) -> bytes:
    return frame


@dataclass
class FaultProxy:
    upstream_port: int
    fault: Fault = no_fault
    connect_timeout: float = 10.0
    log: list[tuple[str, int, int, int]] = field(default_factory=list)  # direction, index, in bytes, out bytes
    _server: Optional[socket.socket] = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(1)
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.connect_timeout
            while True:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1.0)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        client.close()
                        return
                    time.sleep(0.02)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, upstream]
            for source, sink, direction in ((client, upstream, TO_FIRMWARE), (upstream, client, TO_HOST)):
                thread = threading.Thread(target=self._pump, args=(source, sink, direction), daemon=True)
                thread.start()
                self._threads.append(thread)
            return

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        source.settimeout(0.1)
        buffer = bytearray()
        index = 0
        while not self._stop.is_set():
            try:
                data = source.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            buffer += data
            while True:
                start = buffer.find(MAGIC)
                if start < 0 or len(buffer) - start < HEADER_BYTES:
                    break
                end = start + HEADER_BYTES + (buffer[start + 4] | buffer[start + 5] << 8) + CRC_BYTES
                if len(buffer) < end:
                    break
                frame = bytes(buffer[start:end])
                del buffer[:end]
                out = self.fault(direction, index, frame)
                self.log.append((direction, index, len(frame), len(out)))
                index += 1
                try:
                    sink.sendall(out)
                except OSError:
                    return
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        for sock in [*self._sockets, *([self._server] if self._server else [])]:
            try:
                sock.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=2.0)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def on_frame(direction: str, seqs: set[int], change: Callable[[bytes], bytes], *, every: bool = False) -> Fault:
    """A fault that changes the RUN requests (or answers) with these sequence numbers travelling in `direction`:
    the first of each only (so a resend passes), or `every` one."""
    seen: set[int] = set()
    wanted = MessageType.RUN if direction == TO_FIRMWARE else MessageType.RUN_REPLY

    def fault(d: str, index: int, frame: bytes) -> bytes:
        seq = frame[3]
        if d != direction or frame[2] != wanted or seq not in seqs or (seq in seen and not every):
            return frame
        seen.add(seq)
        return change(frame)

    return fault


def flip(offset: int) -> Callable[[bytes], bytes]:
    def change(frame: bytes) -> bytes:
        data = bytearray(frame)
        data[offset % len(data)] ^= 0x5A
        return bytes(data)

    return change


def truncate(keep: int) -> Callable[[bytes], bytes]:
    return lambda frame: frame[:keep]


def drop(frame: bytes) -> bytes:
    return b""


def swap(offset: int) -> Callable[[bytes], bytes]:
    """Reorder two neighbouring bytes (chosen where they differ)."""

    def change(frame: bytes) -> bytes:
        data = bytearray(frame)
        i = offset
        while data[i] == data[i + 1]:
            i += 1
        data[i], data[i + 1] = data[i + 1], data[i]
        return bytes(data)

    return change
