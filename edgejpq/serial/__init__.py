"""Talking to generated firmware over a serial line: the framed protocol (protocol.py), a link with
bounded timeouts and safe retries on top of pyserial (link.py), validation of a model's firmware
against the numpy reference (validate.py) and QEMU with its UART on a loopback socket (qemu.py).

The protocol is described for other implementers in docs/serial-protocol.md.
"""
