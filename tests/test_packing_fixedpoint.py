"""Weight packing and the fixed-point helpers: hand-worked values, properties, and the C mirror.

The C helpers (firmware_templates/kernels/ejq_fixedpoint.h) are compiled into tests/c/
fixedpoint_harness.c and compared bit for bit with edgejpq.quant.fixedpoint on random int32s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgejpq.quant.fixedpoint import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier,
                                      multiply_by_quantized_multiplier_single, quantize_multiplier,
                                      rounded_average, rounding_divide_by_pot, saturate_int32,
                                      saturating_rounding_doubling_high_mul)
from edgejpq.quant.packing import pack_rows, row_bytes, unpack_rows, value_range
from edgejpq.resources import templates_dir

HARNESS = Path(__file__).parent / "c" / "fixedpoint_harness.c"

# --------------------------------------------------------------------------- packing


@st.composite
def weight_rows(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    bits = draw(st.sampled_from((2, 4, 8)))
    lo, hi = value_range(bits)
    rows = draw(st.integers(1, 5))  # pack_rows cannot take 0 rows (reported; no model has an empty run)
    k = draw(st.integers(1, 40))
    values = draw(st.lists(st.integers(lo, hi), min_size=rows * k, max_size=rows * k))
    return bits, np.array(values, dtype=np.int64).reshape(rows, k)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(weight_rows())
def test_pack_unpack_round_trip(case: tuple[int, np.ndarray]) -> None:
    bits, values = case
    packed = pack_rows(values, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (values.shape[0], row_bytes(values.shape[1], bits))
    np.testing.assert_array_equal(unpack_rows(packed, bits, values.shape[1]), values)


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(weight_rows())
def test_packing_bit_order_matches_the_c_kernels(case: tuple[int, np.ndarray]) -> None:
    """Element j of a row sits in byte j // (8 / bits) at bit (j % (8 / bits)) * bits, as ejq_weight_at reads it."""
    bits, values = case
    packed = pack_rows(values, bits)
    per_byte = 8 // bits
    for r, row in enumerate(values):
        for j, value in enumerate(row):
            field = (int(packed[r, j // per_byte]) >> ((j % per_byte) * bits)) & ((1 << bits) - 1)
            assert (field ^ (1 << (bits - 1))) - (1 << (bits - 1)) == value
        padding_bits = row_bytes(len(row), bits) * 8 - len(row) * bits
        if padding_bits:
            assert int(packed[r, -1]) >> (8 - padding_bits) == 0, "row padding must be zero bits"


@pytest.mark.unit
@pytest.mark.parametrize("bits, values, expected", [
    (4, [1, -1], [0xF1]),                 # low nibble first
    (4, [-8, 7, 3], [0x78, 0x03]),        # odd length: high nibble of the last byte is padding
    (2, [1, -1, 0, -2], [0x8D]),          # 0b10_00_11_01
    (2, [-2, 1, -1, 0, 1], [0x36, 0x01]),  # 0b00_11_01_10, then 0b01
    (8, [-1, 127, -128, 0], [0xFF, 0x7F, 0x80, 0x00]),
])
def test_pack_known_bytes(bits: int, values: list[int], expected: list[int]) -> None:
    assert pack_rows(np.array([values]), bits).ravel().tolist() == expected


@pytest.mark.unit
def test_pack_refuses_out_of_range_and_bad_bits() -> None:
    with pytest.raises(ValueError):
        pack_rows(np.array([[8]]), 4)
    with pytest.raises(ValueError):
        pack_rows(np.array([[1]]), 3)


# --------------------------------------------------------------------------- fixed point, hand-worked values


@pytest.mark.unit
@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)),
    (1.0, (1 << 30, 1)),
    (0.25, (1 << 30, -1)),
    (0.75, (3 << 29, 0)),
    (0.0, (0, 0)),
    (1e-20, (0, 0)),                      # below 2^-32: TFLite flushes to zero
    (2.0 ** 40, (INT32_MAX, 30)),          # above the largest shift: saturated
    (1.0 - 2.0 ** -33, (1 << 30, 1)),      # mantissa rounds up to 2^31: renormalized
])
def test_quantize_multiplier(real: float, expected: tuple[int, int]) -> None:
    assert quantize_multiplier(real) == expected


@pytest.mark.unit
def test_quantize_multiplier_refuses_negative() -> None:
    with pytest.raises(ValueError):
        quantize_multiplier(-0.5)


def _scalar(fn, *args) -> int:
    return int(np.asarray(fn(*[np.int64(a) for a in args])))


@pytest.mark.unit
@pytest.mark.parametrize("a, b, expected", [
    (INT32_MIN, INT32_MIN, INT32_MAX),     # the one overflow case saturates
    (1 << 30, 1 << 30, 1 << 29),           # 0.5 * 0.5 = 0.25 in Q31
    (INT32_MAX, INT32_MAX, INT32_MAX - 1),
    (INT32_MIN, INT32_MAX, -INT32_MAX),
    (-1, 1 << 30, 0),                      # -0.5: gemmlowp's nudge 1 - 2^30 rounds a negative tie toward zero
    (-3, 1 << 30, -1),                     # -1.5 -> -1 (toward zero)
    (3, 1 << 30, 2),                       # 1.5 -> 2 (a positive tie rounds up)
    (100, 0, 0),
])
def test_saturating_rounding_doubling_high_mul(a: int, b: int, expected: int) -> None:
    assert _scalar(saturating_rounding_doubling_high_mul, a, b) == expected


@pytest.mark.unit
@pytest.mark.parametrize("x, exponent, expected", [
    (5, 1, 3), (-5, 1, -3),                # gemmlowp: ties away from zero
    (4, 1, 2), (-4, 1, -2),
    (3, 1, 2), (-3, 1, -2),
    (5, 2, 1), (-5, 2, -1),                # 1.25 -> 1
    (6, 2, 2), (-6, 2, -2),                # 1.5 -> 2
    (7, 0, 7), (-7, 0, -7),
    (INT32_MIN, 31, -1), (INT32_MAX, 31, 1), (-(1 << 30), 31, -1), ((1 << 30) - 1, 31, 0),
])
def test_rounding_divide_by_pot(x: int, exponent: int, expected: int) -> None:
    assert _scalar(rounding_divide_by_pot, x, exponent) == expected


@pytest.mark.unit
@pytest.mark.parametrize("x, multiplier, shift, expected", [
    (100, 1 << 30, 0, 50),
    (100, 1 << 30, 1, 100),
    (101, 1 << 30, 0, 51),                 # 50.5 -> 51
    (-101, 1 << 30, 0, -50),               # -50.5 -> -50: SRDHM rounds a negative tie toward zero
    (1000, 1 << 30, -3, 63),               # 1000 * 0.5 / 8 = 62.5 -> 63
    (INT32_MAX, INT32_MAX, 1, INT32_MAX - 1),  # left shift saturates to INT32_MAX first
    (INT32_MIN, 1 << 30, 5, -(1 << 30)),   # saturates to INT32_MIN, then * 0.5
    (12345, 0, -31, 0),
])
def test_multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int, expected: int) -> None:
    assert _scalar(multiply_by_quantized_multiplier, x, multiplier, shift) == expected


@pytest.mark.unit
@pytest.mark.parametrize("x, multiplier, shift, expected", [
    (1000, 1 << 30, -3, 63),               # 62.5 -> 63: ties round up
    (-1000, 1 << 30, -3, -62),             # -62.5 -> -62: ties round up (toward +inf), unlike SRDHM/RDBPOT
    (-101, 1 << 30, 0, -50),               # -50.5 -> -50
    (101, 1 << 30, 0, 51),
    (3, 1 << 30, -1, 1),                   # 0.75 -> 1 in one rounding (double rounding: 1.5 -> 2 -> 1)
    (INT32_MAX, INT32_MAX, 30, INT32_MAX),  # saturates
    (INT32_MIN, INT32_MAX, 30, INT32_MIN),
    (12345, 0, -31, 0),
])
def test_multiply_by_quantized_multiplier_single(x: int, multiplier: int, shift: int, expected: int) -> None:
    assert _scalar(multiply_by_quantized_multiplier_single, x, multiplier, shift) == expected
    exact = (x * multiplier + (1 << (30 - shift))) >> (31 - shift)  # Python ints: exact floor
    assert expected == max(INT32_MIN, min(INT32_MAX, exact))


@pytest.mark.unit
@pytest.mark.parametrize("total, count, expected", [(5, 2, 3), (-5, 2, -3), (4, 3, 1), (-4, 3, -1), (5, 3, 2),
                                                    (-5, 3, -2), (0, 7, 0), (-128 * 9, 9, -128)])
def test_rounded_average(total: int, count: int, expected: int) -> None:
    assert _scalar(rounded_average, total, count) == expected


@pytest.mark.unit
def test_saturate_int32() -> None:
    np.testing.assert_array_equal(saturate_int32(np.array([-(1 << 40), -5, 1 << 40])), [INT32_MIN, -5, INT32_MAX])


# --------------------------------------------------------------------------- the C helpers vs numpy


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("no host C compiler `cc` on PATH (CI must install gcc)")
        pytest.skip("no host C compiler `cc` on PATH: install gcc to run the host_c tier")
    exe = tmp_path_factory.mktemp("fixedpoint") / "fixedpoint_harness"
    command = [cc, "-std=c99", "-pedantic", "-O2", "-Wall", "-Wextra", "-Werror", "-Wconversion",
               "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
               f"-I{templates_dir() / 'kernels'}", "-o", str(exe), str(HARNESS)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


RECORD = np.dtype([("a", "<i4"), ("b", "<i4"), ("exponent", "<i4"), ("shift", "<i4"), ("wide", "<i8"),
                   ("offset", "<i4"), ("lo", "<i4"), ("hi", "<i4")])


def _random_records(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, dtype=RECORD)
    edges = np.array([INT32_MIN, INT32_MIN + 1, -(1 << 30), -2, -1, 0, 1, 2, 1 << 30, INT32_MAX - 1, INT32_MAX])
    # mix uniform int32s, small values and edge values
    a = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    a[: n // 4] = rng.integers(-70000, 70000, n // 4)
    a[n // 4: n // 4 + 2000] = rng.choice(edges, 2000)
    b = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    b[-2000:] = rng.choice(edges, 2000)
    a[-1000:] = rng.choice(edges, 1000)  # edge against edge (INT32_MIN * INT32_MIN among them)
    rec["a"], rec["b"] = a, b
    rec["exponent"] = rng.integers(0, 32, n)
    rec["shift"] = rng.integers(-31, 31, n)
    rec["wide"] = rng.integers(-(1 << 33) + 1, 1 << 33, n)
    rec["offset"] = rng.integers(-128, 128, n)
    rec["lo"] = rng.integers(-128, 128, n)
    rec["hi"] = np.maximum(rec["lo"], rng.integers(-128, 128, n))
    return rec


@pytest.mark.unit
@pytest.mark.host_c
def test_c_fixedpoint_matches_numpy(harness: Path) -> None:
    rec = _random_records(60_000)
    run = subprocess.run([str(harness)], input=rec.tobytes(), capture_output=True,
                         env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert run.returncode == 0, run.stderr.decode()
    got = np.frombuffer(run.stdout, dtype=np.int32).reshape(len(rec), 7).astype(np.int64)
    a, b = rec["a"].astype(np.int64), rec["b"].astype(np.int64)
    exponent, shift = rec["exponent"].astype(np.int64), rec["shift"].astype(np.int64)
    multiplier = np.where(b >= 0, b, np.where(b == INT32_MIN, INT32_MAX, -b))
    floor_shift = a >> exponent  # numpy's >> on int64 is an arithmetic (floor) shift
    clamp = np.clip(a + rec["offset"], rec["lo"], rec["hi"])
    expected = np.stack([
        saturating_rounding_doubling_high_mul(a, b),
        rounding_divide_by_pot(a, exponent),
        multiply_by_quantized_multiplier(a, multiplier, shift),
        multiply_by_quantized_multiplier(rec["wide"].astype(np.int64), multiplier, shift),
        floor_shift,
        clamp,
        multiply_by_quantized_multiplier_single(a, multiplier, shift),
    ], axis=1)
    names = ["srdhm", "rounding_divide_by_pot", "mbqm", "mbqm64", "floor_shift", "offset_clamp_s8", "mbqm_single"]
    for column, name in enumerate(names):
        bad = np.flatnonzero(expected[:, column] != got[:, column])
        assert bad.size == 0, (f"{name}: C differs from numpy at record {bad[0]} {rec[bad[0]]}: "
                               f"numpy {expected[bad[0], column]}, C {got[bad[0], column]}")
