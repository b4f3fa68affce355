"""The DSP kernel set's code paths, bit-exact against the numpy reference in QEMU (M4, M7, M33).

One-layer models aimed at each path of firmware_templates/kernels/dsp (the random sweeps of
test_qemu.py hit them only by chance): convolutions whose pixel pairs are converted together
(windows clear of the padding, in_c a multiple of 4, stride 1 and 2) or one by one (padding, in_c
not a multiple of 4), every remainder of the unrolled inner loops (blocks of 4 inputs mod 8), odd
channel counts, runs of 8/4/2 bits with channels left over from the sub-byte groups, the int8 clamp
and narrower ones, requantizations off the fast path; fully connected layers with every split of
the rows into the 5-, 4-, 2- and 1-row passes (8 bits), 3- and 2-group passes (4 bits), 2-quad,
1-quad, 2-bit pair and plain-row passes (2 bits; the pair with 1, 2 or 3 channels left over, with and
without quads before, K = 3, 4, 5, 7, 12, 256, 300: every partial block, odd and even block counts),
inputs that end in a partial block or only have one, single rounding, and extreme weights and inputs
(every weight at -2, at +1 or +-1 against inputs at -255 and +255 after the offset).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgejpq.cost.target import load_target
from edgejpq.emulate.qemu import emulate_qemu
from edgejpq.quant.packing import pack_rows, value_range
from edgejpq.quant.reference import predict

from needs import need_programs
from random_models import ModelBuilder

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="session", autouse=True)
def tools() -> None:
    need_programs()


class _Builder(ModelBuilder):
    """A ModelBuilder whose next weighted layer takes the given (bits, count) runs."""

    runs: list[tuple[int, int]] | None = None

    def _run_spec(self, c_out, bits):
        if self.runs is not None:
            runs, self.runs = self.runs, None
            assert sum(n for _, n in runs) == c_out
            return runs
        return super()._run_spec(c_out, bits)


def _conv(name: str, seed: int, in_shape: tuple[int, int, int], runs: list[tuple[int, int]],
          kernel: tuple[int, int] = (3, 3), stride: tuple[int, int] = (1, 1),
          padding: tuple[int, int, int, int] = (1, 1, 1, 1), clamps: bool = True):
    b = _Builder(np.random.default_rng(seed), name, clamps=clamps)
    x = b.tensor(in_shape)
    b.runs = list(runs)
    y = b.conv(x, sum(n for _, n in runs), kernel, stride, padding)
    return b.build(x, y)


def _fc(name: str, seed: int, inputs: int, runs: list[tuple[int, int]], rounding: str = "double",
        extreme: bool = False, clamps: bool = True, weights=None, zero_point: int | None = None):
    """`extreme`: every weight at its most negative and zero point 127 (|w (x - zp)| at its largest for
    x = -128); `weights(bits, count, inputs)`: the weight values of each run, with `zero_point`."""
    b = _Builder(np.random.default_rng(seed), name, clamps=clamps)
    x = b.tensor((1, 1, inputs), zero_point=127 if extreme else zero_point)
    b.runs = list(runs)
    y = b.fc(x, sum(n for _, n in runs), rounding=rounding)
    if extreme:
        weights = lambda bits, count, k: np.full((count, k), value_range(bits)[0])  # noqa: E731
    if weights is not None:
        op = b.ops[-1]
        b.arrays[f"{op.name}.weights"] = np.concatenate(
            [pack_rows(weights(run.bits, run.count, inputs), run.bits).ravel() for run in op.runs]).astype(np.uint8)
    return b.build(x, y)


def _alternating(bits: int, count: int, k: int) -> np.ndarray:
    """+1 and -1 in a checkerboard over (channel, input)."""
    i, j = np.indices((count, k))
    return np.where((i + j) % 2 == 0, 1, -1)


def _models():
    mixed = [(8, 7), (4, 5), (2, 6)]  # odd 8-bit count; a 4-bit and two 2-bit channels left over
    models = [
        _conv("conv_joint", 1, (7, 9, 16), mixed),                        # interior pairs, odd pixel count
        _conv("conv_joint_full", 2, (6, 6, 8), [(8, 4), (4, 4), (2, 8)], clamps=False),
        _conv("conv_stride2", 3, (9, 10, 12), [(2, 4), (8, 3), (4, 2)], stride=(2, 2), padding=(0, 1, 1, 0)),
        _conv("conv_in_c6", 4, (5, 7, 6), mixed),                         # gathered windows
        _conv("conv_5x3", 5, (8, 8, 4), [(4, 3), (8, 2), (2, 5)], kernel=(5, 3), padding=(2, 2, 1, 1)),
        _conv("conv_1d", 6, (1, 13, 20), mixed, kernel=(1, 3), padding=(0, 0, 1, 1)),
    ]
    for i, in_c in enumerate((4, 8, 12, 16, 20, 24, 28, 36, 60)):      # blocks 1..9, 15: every remainder
        models.append(_conv(f"pointwise_{in_c}", 10 + i, (3, 5, in_c), [(8, 3), (4, 3), (2, 5)],
                            kernel=(1, 1), padding=(0, 0, 0, 0), clamps=i % 2 == 0))
    fc_runs = {
        "fc_8bit_splits": (40, [(8, 1), (8, 2), (8, 3), (8, 7), (8, 8), (8, 11), (8, 13)]),
        "fc_8bit_5s": (257, [(8, 10)]),
        "fc_4bit": (37, [(4, 1), (4, 3), (4, 4), (4, 6), (4, 9), (4, 13)]),
        "fc_2bit": (30, [(2, 1), (2, 2), (2, 3), (2, 6), (2, 11), (2, 15)]),
        "fc_mixed": (31, [(8, 9), (4, 7), (2, 10), (8, 3)]),
        "fc_tiny": (3, [(8, 5), (4, 3), (2, 6)]),                        # only a partial block
        "fc_one_block": (4, [(8, 6), (4, 6), (2, 10)]),
    }
    for i, (name, (inputs, runs)) in enumerate(fc_runs.items()):
        models.append(_fc(name, 40 + i, inputs, runs))
        models.append(_fc(f"{name}_single", 50 + i, inputs, runs, rounding="single"))
    models.append(_fc("fc_extreme", 60, 300, [(2, 10), (4, 7), (8, 6)], extreme=True, clamps=False))
    models.append(_fc("fc_extreme_2bit", 61, 1024, [(2, 6)], extreme=True))
    # the 2-bit pair of fully connected runs: 1, 2, 3 channels left over with and without quads before,
    # inputs ending in every partial block and an odd or even number of blocks (the pair's words)
    pair_runs = [(2, 1), (2, 2), (2, 3), (2, 5), (2, 6), (2, 7), (2, 9), (2, 10), (2, 11)]
    for i, inputs in enumerate((3, 4, 5, 7, 12, 256, 300)):
        models.append(_fc(f"fc_2bit_pair_{inputs}", 70 + i, inputs, pair_runs, clamps=i % 2 == 0))
    for i, inputs in enumerate((5, 300)):  # x - zp at +255 (zp -128, x 127) and -255 (zp 127, x -128)
        for j, zp in enumerate((-128, 127)):
            runs = [(2, 2), (2, 7), (8, 1)]
            models.append(_fc(f"fc_2bit_pair_max_{inputs}_{j}", 80 + 2 * i + j, inputs, runs, clamps=False,
                              weights=lambda bits, count, k: np.full((count, k), value_range(bits)[1]),
                              zero_point=zp))
            models.append(_fc(f"fc_2bit_pair_alt_{inputs}_{j}", 90 + 2 * i + j, inputs, runs, clamps=False,
                              weights=_alternating, zero_point=zp))
            models.append(_fc(f"fc_2bit_pair_min_{inputs}_{j}", 100 + 2 * i + j, inputs, runs, clamps=False,
                              weights=lambda bits, count, k: np.full((count, k), value_range(bits)[0]),
                              zero_point=zp))
    return models


def _inputs(model, n: int = 24) -> np.ndarray:
    x = np.random.default_rng(7).integers(-128, 128, size=(n, *model.input_info.shape), dtype=np.int8)
    for row, value in zip(x, (-128, 127, model.input_info.zero_point)):
        row[...] = value
    return x


@pytest.mark.parametrize("target_name", ["cortex-m4", "cortex-m7", "cortex-m33"])
def test_dsp_kernel_paths_bit_exact(target_name: str, tmp_path: Path) -> None:
    target = load_target(target_name)
    assert target.kernels == "dsp"

    def check(model):
        x = _inputs(model)
        result = emulate_qemu(model, x, tmp_path / model.name, target)
        assert result.bit_exact, f"{target_name} {model.name}: {result.mismatch}"
        assert np.array_equal(result.outputs, predict(model, x).reshape(len(x), -1))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(check, _models()))


def test_pair2_layout_bytes_and_values() -> None:
    """The 2-bit pair takes the plain packing's bytes for every K, and its nibbles decode back."""
    from codegen.dsp_layout import dsp_pack_run

    rng = np.random.default_rng(3)
    for k in range(1, 21):
        for count in range(1, 12):
            values = rng.integers(-2, 2, size=(count, k))
            packed = dsp_pack_run(values, 2, pair2=True)
            assert packed.size == pack_rows(values, 2).size
            left = count % 4
            if left < 2:
                assert np.array_equal(packed, dsp_pack_run(values, 2))
                continue
            nbytes = (k + 3) // 4
            start = (count - left) * nbytes
            pair = packed[start: start + 2 * nbytes]
            blocks = nbytes
            for i in range(k):
                b, j = divmod(i, 4)
                word, odd = divmod(b, 2)
                if b == blocks - 1 and blocks % 2:  # a last, odd block: 2 bytes
                    byte = pair[4 * word + (j >> 1)]
                else:
                    byte = pair[4 * word + 2 * (j >> 1) + odd]
                n = (int(byte) >> (4 * (j & 1))) & 0xF
                assert (n >> 2) - 2 == values[count - left, i] and (n & 3) - 2 == values[count - left + 1, i]
            assert np.array_equal(packed[start + 2 * nbytes:], dsp_pack_run(values[count - left + 2:], 2))
