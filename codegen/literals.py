"""Tiny C-literal helpers used as Jinja filters: identifiers, integer and byte arrays, floats.

Everything C-shaped beyond these literals lives in the whole-file templates.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

_C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
_Bool _Complex _Imaginary
""".split())

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_c_identifier(name: str) -> bool:
    """True if `name` can be used as is as a C identifier (and is not a keyword).

    >>> is_c_identifier("mnist_cnn"), is_c_identifier("2net"), is_c_identifier("int"), is_c_identifier("a-b")
    (True, False, False, False)
    """
    return bool(_IDENTIFIER.match(name)) and name not in _C_KEYWORDS


def c_identifier(name: str) -> str:
    """Turn any string into a valid C identifier (other characters become `_`).

    >>> c_identifier("resnet-8 v2"), c_identifier("8bit"), c_identifier(""), c_identifier("int")
    ('resnet_8_v2', '_8bit', '_', 'int_')
    """
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not ident or ident[0].isdigit():
        ident = "_" + ident
    return ident + "_" if ident in _C_KEYWORDS else ident


def c_int_array(values: Iterable[int], per_line: int = 12, indent: str = "    ") -> str:
    """Comma-separated decimal integers, `per_line` a line, each line indented (no braces).

    INT32_MIN is written as `(-2147483647 - 1)` because `-2147483648` is not an int literal in C.

    >>> print(c_int_array([1, -2, 3, 4, 5], per_line=2))
        1, -2,
        3, 4,
        5
    >>> c_int_array([-2147483648])
    '    (-2147483647 - 1)'
    """
    items = [c_int(int(v)) for v in values]
    lines = [", ".join(items[i: i + per_line]) for i in range(0, len(items), per_line)]
    return (",\n").join(indent + line for line in lines)


def c_hex_bytes(data: bytes | Iterable[int], per_line: int = 16, indent: str = "    ") -> str:
    """Comma-separated `0x..` bytes, `per_line` a line, each line indented (no braces).

    >>> print(c_hex_bytes(bytes([0, 15, 241]), per_line=2))
        0x00, 0x0f,
        0xf1
    """
    items = [f"0x{b:02x}" for b in bytes(data)]
    lines = [", ".join(items[i: i + per_line]) for i in range(0, len(items), per_line)]
    return (",\n").join(indent + line for line in lines)


def c_int(value: int) -> str:
    """One C integer literal for a value in int32 range (INT32_MIN spelled safely).

    >>> c_int(-5), c_int(-2147483648)
    ('-5', '(-2147483647 - 1)')
    """
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"{value} does not fit an int32 literal")
    return "(-2147483647 - 1)" if value == -(1 << 31) else str(value)


def c_float(value: float) -> str:
    """A C `float` literal that round-trips through float32 (for documentation macros only).

    >>> c_float(0.003921568859368563), c_float(1.0), c_float(2e-10)
    ('0.00392156886f', '1.0f', '2e-10f')
    """
    if not math.isfinite(value):
        raise ValueError(f"{value} has no C float literal")
    text = f"{value:.9g}"
    if not any(ch in text for ch in ".en"):
        text += ".0"
    return text + "f"


def c_string(text: str) -> str:
    """A C string literal holding `text` (ASCII, escaped), for messages in generated programs.

    >>> print(c_string('say "hi"\\n'))
    "say \\"hi\\"\\n"
    """
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.append(f"\\{ord(ch) & 0xFF:03o}" if ord(ch) < 256 else "?")
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """Text made safe inside a /* */ comment (no comment terminator, single line).

    >>> c_comment("a */ b\\nc")
    'a * / b c'
    """
    return text.replace("*/", "* /").replace("\n", " ").replace("\r", " ")
