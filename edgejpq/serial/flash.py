"""Flash an STM32 through its ROM bootloader over a UART (ST AN3155), with the `stm32loader` library.

The sequence: sync (0x7F → ACK 0x79), GET (bootloader version and commands), GET ID (checked
against the board's chip), erase, write memory in 256-byte blocks, read back and verify, GO.
stm32loader (GPL-3.0-or-later, an optional dependency: `pip install 'edgejpq[flash]'`) speaks the
bytes; this module picks the steps, checks the answers and turns every failure into a message
that names the port, the step and the address.

A board's bootloader needs BOOT0 held high during reset and a USB-serial adapter on one of the
bootloader's USARTs (8 data bits, even parity, 1 stop bit); NUCLEO boards flash more simply
through their ST-LINK with OpenOCD (`make flash` in a generated board project).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from edgejpq.errors import EdgejpqError
from edgejpq.resources import templates_dir

BLOCK_BYTES = 256  # the most one WRITE MEMORY / READ MEMORY command moves (AN3155)
DEFAULT_BAUD = 115200
READ_TIMEOUT_SECONDS = 1.0  # per byte; stm32loader raises the erase's own wait to 30 s
ProgressCallback = Callable[[str, int, int], None]  # step, done, total bytes


@dataclass(frozen=True)
class FlashResult:
    port: str
    chip_id: int
    chip: str
    bootloader_version: int
    address: int
    bytes_written: int
    verified: bool
    started: bool
    seconds: float


@lru_cache(maxsize=None)
def product_ids() -> dict[str, int]:
    """Chip name prefix → the product ID its bootloader's GET ID returns (AN2606)."""
    path = templates_dir() / "boards" / "serial" / "stm32_product_ids.yaml"
    return {str(k): int(v) for k, v in yaml.safe_load(path.read_text())["product_ids"].items()}


def expected_product_id(chip: str) -> int:
    """The product ID of `chip` (e.g. STM32F446RE → 0x421), or an EdgejpqError naming the table."""
    for prefix, pid in sorted(product_ids().items(), key=lambda item: -len(item[0])):
        if chip.upper().startswith(prefix):
            return pid
    raise EdgejpqError(f"chip {chip}: its bootloader product ID is not in "
                       f"firmware_templates/boards/serial/stm32_product_ids.yaml (from ST AN2606): add it there")


def firmware_image(path: Path, objcopy: str = "arm-none-eabi-objcopy") -> bytes:
    """The bytes to program: a .bin as it is, an ELF converted with objcopy -O binary."""
    path = Path(path)
    if not path.is_file():
        raise EdgejpqError(f"{path}: no such firmware file (give the .elf or .bin a board project builds)")
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        if not data:
            raise EdgejpqError(f"{path}: the firmware file is empty")
        return data
    import shutil

    tool = shutil.which(objcopy)
    if tool is None:
        raise EdgejpqError(f"{objcopy} is not on PATH: it converts {path.name} to a binary image "
                           f"(apt-get install binutils-arm-none-eabi), or give the .bin")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "image.bin"
        result = subprocess.run([tool, "-O", "binary", str(path), str(out)], capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            raise EdgejpqError(f"{path}: {objcopy} cannot convert it to a binary image: {result.stderr.strip()}")
        return out.read_bytes()


def open_bootloader_port(port: str, baud: int = DEFAULT_BAUD) -> Any:
    """The port with the bootloader's line settings: 8 data bits, even parity, 1 stop bit."""
    import serial

    try:
        return serial.serial_for_url(port, baudrate=baud, parity=serial.PARITY_EVEN, timeout=READ_TIMEOUT_SECONDS,
                                     write_timeout=5.0)
    except (serial.SerialException, ValueError, OSError) as exc:
        raise EdgejpqError(f"port {port}: cannot open it ({exc}); list serial ports with "
                           f"`python -m serial.tools.list_ports`") from None


def _loader() -> Any:
    try:
        from stm32loader import bootloader
    except ImportError:
        raise EdgejpqError("flashing through the STM32 ROM bootloader needs stm32loader: "
                           "pip install 'edgejpq[flash]' (or 'stm32loader>=0.7,<0.8', GPL-3.0-or-later)") from None
    return bootloader


def flash_stm32(image: bytes, connection: Any, *, port: str, chip: str, address: int, verify: bool = True,
                start: bool = True, on_progress: Optional[ProgressCallback] = None) -> FlashResult:
    """Program `image` at `address` through the ROM bootloader on `connection` (a pyserial port, or a fake)."""
    bootloader = _loader()
    loader = bootloader.Stm32Bootloader(connection, verbosity=0)
    begun = time.perf_counter()
    where = f"port {port}"
    step = "sync (0x7F)"

    def progress(name: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(name, done, total)

    try:
        loader.reset_from_system_memory()
        step = "GET"
        version = int(loader.get())
        step = "GET ID"
        chip_id = int(loader.get_id())
        want = expected_product_id(chip)
        if chip_id != want:
            name = bootloader.CHIP_IDS.get(chip_id, "unknown")
            raise EdgejpqError(f"{where}: the chip answers product ID 0x{chip_id:03X} ({name}), but the board's "
                               f"{chip} has 0x{want:03X}: is the right board connected, and --board right?")
        step = "erase"
        progress("erasing", 0, len(image))
        loader.erase_memory(None)  # extended erase where the bootloader lists it (F2/F4/F7/G0/L4...)
        for offset in range(0, len(image), BLOCK_BYTES):
            step = f"write memory at 0x{address + offset:08X}"
            loader.write_memory(address + offset, image[offset: offset + BLOCK_BYTES])
            progress("writing", min(len(image), offset + BLOCK_BYTES), len(image))
        if verify:
            for offset in range(0, len(image), BLOCK_BYTES):
                step = f"read memory at 0x{address + offset:08X}"
                block = image[offset: offset + BLOCK_BYTES]
                got = bytes(loader.read_memory(address + offset, len(block)))
                if got != block:
                    if len(got) != len(block):
                        raise EdgejpqError(f"{where}: verify: reading 0x{address + offset:08X} returned "
                                           f"{len(got)} of {len(block)} bytes (the line went silent)")
                    i = next(j for j in range(len(block)) if got[j] != block[j])
                    raise EdgejpqError(f"{where}: verify failed at 0x{address + offset + i:08X}: read 0x{got[i]:02X}, "
                                       f"wrote 0x{block[i]:02X} (write-protected flash, or a failing erase)")
                progress("verifying", min(len(image), offset + BLOCK_BYTES), len(image))
        if start:
            step = f"GO 0x{address:08X}"
            loader.go(address)
    except bootloader.CommandError as exc:
        text = str(exc)
        if step.startswith("sync"):
            raise EdgejpqError(f"{where}: the STM32 ROM bootloader does not answer the sync byte 0x7F ({text}): "
                               f"hold BOOT0 high, reset the chip, check that the adapter's TX goes to the chip's "
                               f"RX on a bootloader USART (AN2606) and that nothing else holds the port") from None
        if "NACK" in text:
            raise EdgejpqError(f"{where}: the bootloader refused (NACK) {step}: read-out or write protection may be "
                               f"set (AN3155: READOUT UNPROTECT erases the chip)") from None
        raise EdgejpqError(f"{where}: no valid answer from the bootloader at {step} ({text})") from None
    except bootloader.Stm32LoaderError as exc:
        raise EdgejpqError(f"{where}: the bootloader failed at {step}: {exc}") from None
    except OSError as exc:
        raise EdgejpqError(f"{where}: the connection failed at {step} ({exc})") from None
    return FlashResult(port=port, chip_id=chip_id, chip=chip, bootloader_version=version, address=address,
                       bytes_written=len(image), verified=verify, started=start,
                       seconds=time.perf_counter() - begun)


__all__ = ["BLOCK_BYTES", "FlashResult", "expected_product_id", "firmware_image", "flash_stm32",
           "open_bootloader_port", "product_ids"]
