"""A fake serial port with an STM32 ROM bootloader behind it, answering byte for byte as ST's AN3155 specifies.

Commands are two bytes (code, code ^ 0xFF); addresses are 4 big-endian bytes plus their XOR;
ACK is 0x79, NACK 0x1F. Knobs make it misbehave: stay silent, NACK a command, answer another
chip ID, or return a changed byte when memory is read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import Generator, Optional

ACK = 0x79
NACK = 0x1F
SYNC = 0x7F
GET, GET_ID, READ_MEMORY, GO, WRITE_MEMORY, EXTENDED_ERASE = 0x00, 0x02, 0x11, 0x21, 0x31, 0x44
COMMANDS = (0x00, 0x01, 0x02, 0x11, 0x21, 0x31, 0x44, 0x63, 0x73, 0x82, 0x92)


def xor(data: bytes, start: int = 0) -> int:
    return reduce(lambda a, b: a ^ b, data, start)


@dataclass
class FakeStm32Port:
    """What stm32loader needs of a connection: write(bytes), read(n) -> bytes, a timeout attribute."""

    chip_id: int = 0x421  # STM32F446
    version: int = 0x31
    flash_base: int = 0x08000000
    silent: bool = False
    nack_command: Optional[int] = None
    corrupt_read_at: Optional[int] = None  # an address whose byte reads back changed
    timeout: float = 1.0
    memory: dict[int, int] = field(default_factory=dict)
    received: bytearray = field(default_factory=bytearray)  # every byte the host sent
    commands: list[int] = field(default_factory=list)
    erased: bool = False
    jumped_to: Optional[int] = None
    _inbox: bytearray = field(default_factory=bytearray)
    _outbox: bytearray = field(default_factory=bytearray)
    _machine: Optional[Generator[int, None, None]] = None

    def __post_init__(self) -> None:
        self._machine = self._session()
        next(self._machine)

    def write(self, data: bytes) -> int:
        self.received += data
        if not self.silent:
            self._inbox += data
            self._run()
        return len(data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._outbox[:size])
        del self._outbox[:size]
        return out

    # the bootloader: a generator that yields how many bytes it needs next and finds them in _inbox

    def _run(self) -> None:
        assert self._machine is not None
        while self._inbox and self._need <= len(self._inbox):
            next(self._machine)

    _need: int = 1

    def _take(self, n: int) -> Generator[int, None, bytes]:
        self._need = n
        while len(self._inbox) < n:
            yield n
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    def _address(self) -> Generator[int, None, Optional[int]]:
        raw = yield from self._take(5)
        if xor(raw[:4]) != raw[4]:
            self._outbox.append(NACK)
            return None
        self._outbox.append(ACK)
        return int.from_bytes(raw[:4], "big")

    def _session(self) -> Generator[int, None, None]:
        yield 0
        while (yield from self._take(1)) != bytes((SYNC,)):
            pass
        self._outbox.append(ACK)
        while True:
            code, check = yield from self._take(2)
            if code ^ check != 0xFF or code == self.nack_command:
                self._outbox.append(NACK)
                continue
            self.commands.append(code)
            self._outbox.append(ACK)
            if code == GET:
                self._outbox += bytes((len(COMMANDS), self.version, *COMMANDS, ACK))
            elif code == GET_ID:
                self._outbox += bytes((1, self.chip_id >> 8, self.chip_id & 0xFF, ACK))
            elif code == READ_MEMORY:
                address = yield from self._address()
                if address is None:
                    continue
                n, check = yield from self._take(2)
                if n ^ check != 0xFF:
                    self._outbox.append(NACK)
                    continue
                self._outbox.append(ACK)
                for a in range(address, address + n + 1):
                    value = self.memory.get(a, 0xFF)
                    self._outbox.append(value ^ 0x01 if a == self.corrupt_read_at else value)
            elif code == WRITE_MEMORY:
                address = yield from self._address()
                if address is None:
                    continue
                (n,) = yield from self._take(1)
                data = yield from self._take(n + 1)
                (checksum,) = yield from self._take(1)
                if xor(data, n) != checksum:
                    self._outbox.append(NACK)
                    continue
                for i, value in enumerate(data):
                    self.memory[address + i] = value
                self._outbox.append(ACK)
            elif code == EXTENDED_ERASE:
                request = yield from self._take(3)
                if request != b"\xff\xff\x00":  # the global mass erase only
                    self._outbox.append(NACK)
                    continue
                self.memory.clear()
                self.erased = True
                self._outbox.append(ACK)
            elif code == GO:
                self.jumped_to = yield from self._address()
