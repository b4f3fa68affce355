"""Firmware with the serial harness running in qemu-system-arm, its UART on a loopback TCP socket.

QEMU listens (`-chardev socket,server=on,wait=on,nodelay=on`) on a free port of 127.0.0.1 and
starts the guest once a client connects, so the firmware's start-up HELLO is never lost; the host
then talks through pyserial's `socket://127.0.0.1:PORT`, exactly as to a board. QEMU is always
stopped when the `QemuSerial` context ends (errors and Ctrl-C included).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Optional

from edgejpq.emulate.qemu import QemuFirmware, find_cross_tools, plugin_args, qemu_machine_args
from edgejpq.errors import EdgejpqError
from edgejpq.serial.link import DEFAULT_BAUD, DEFAULT_RETRIES, DEFAULT_TIMEOUT_SECONDS, SerialLink

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0
PORT_ATTEMPTS = 3


def free_loopback_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class QemuSerial:
    """`with QemuSerial(fw) as qemu: link = qemu.connect()`; QEMU stops when the block ends.

    `counts_file` also loads edgejpq's instruction-count plugin, which writes its report there
    when QEMU stops (see `stop`).
    """

    def __init__(self, fw: Optional[QemuFirmware] = None, *, counts_file: Optional[Path] = None,
                 start_timeout: float = START_TIMEOUT_SECONDS, machine_args: Optional[list[str]] = None,
                 label: str = "") -> None:
        if (fw is None) == (machine_args is None):
            raise ValueError("give a firmware or machine_args")
        if fw is not None:
            machine_args = [*qemu_machine_args(fw, find_cross_tools(fw.target.compiler.cc)), "-display", "none"]
            label = f"QEMU {fw.target.qemu.machine if fw.target.qemu else ''} {fw.elf.name}"
        self.fw = fw
        self.machine_args = list(machine_args or [])
        self.label = label
        self.counts_file = counts_file
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None
        self._links: list[SerialLink] = []
        self.console = ""

    @classmethod
    def board_image(cls, elf: Path, machine: str, *, uart_index: int = 0,
                    start_timeout: float = START_TIMEOUT_SECONDS) -> "QemuSerial":
        """A board's own image on a QEMU machine with its chip (e.g. an STM32F4 image on netduinoplus2):
        QEMU's serial number `uart_index` (its USART{uart_index + 1}) goes on the socket."""
        import shutil

        qemu = shutil.which("qemu-system-arm")
        if qemu is None:
            raise EdgejpqError("qemu-system-arm is not on PATH (apt-get install qemu-system-arm)")
        args = [qemu, "-M", machine, "-display", "none", "-monitor", "none", "-kernel", str(elf),
                *(["-serial", "null"] * uart_index)]
        return cls(machine_args=args, start_timeout=start_timeout, label=f"QEMU {machine} {Path(elf).name}")

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def __enter__(self) -> "QemuSerial":
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        self.port = free_loopback_port()
        command = [*self.machine_args, "-chardev",
                   f"socket,id=ejq,host=127.0.0.1,port={self.port},server=on,wait=on,nodelay=on",
                   "-serial", "chardev:ejq"]
        if self.counts_file is not None and self.fw is not None:
            command += plugin_args(self.fw, self.counts_file)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def connect(self, *, url: Optional[str] = None, baud: int = DEFAULT_BAUD,
                timeout: float = DEFAULT_TIMEOUT_SECONDS, retries: int = DEFAULT_RETRIES) -> SerialLink:
        """Open a link to the firmware (to QEMU's port, or to `url`, e.g. a proxy in front of it).

        Opening is retried until QEMU listens, at most `start_timeout` seconds; QEMU failing to
        start (its port taken meanwhile) is retried on another port.
        """
        import serial

        deadline = time.monotonic() + self.start_timeout
        restarts = 0
        last = ""
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                log = self._read_log()
                if url is None and "Address already in use" in log and restarts < PORT_ATTEMPTS:
                    restarts += 1
                    self._start()
                    continue
                raise EdgejpqError(f"{self.label} exited with status {code} before a connection: "
                                   f"{log[-600:] or 'no output'}")
            target = url or self.url
            try:
                port = serial.serial_for_url(target, baudrate=baud, timeout=0.05, write_timeout=max(timeout, 1.0))
            except (serial.SerialException, OSError, ValueError) as exc:
                last = str(exc)
                if time.monotonic() > deadline:
                    raise EdgejpqError(f"{target}: QEMU did not accept a connection within {self.start_timeout:g} s "
                                       f"({last})") from None
                time.sleep(0.02)
                continue
            link = SerialLink(port=port, url=target, where=f"port {target} ({self.label})", baud=baud,
                              timeout=timeout, retries=retries)
            self._links.append(link)
            return link

    def stop(self) -> str:
        """Close the links and stop QEMU (SIGTERM, so the plugin writes its report; then SIGKILL); the console text."""
        for link in self._links:
            link.close()
        self._links.clear()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.console = self._read_log()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None
        return self.console

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


__all__ = ["QemuSerial", "free_loopback_port"]
