"""Tests for edgejpq.data, edgejpq.zoo and edgejpq.train."""

from __future__ import annotations

import gzip
import random
import socket
import struct
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from edgejpq.data import (DEBIAN_FASHION_MNIST_DIR, Dataset, calibration_subset, load_dataset, mnist1d_cache_path,
                          read_idx)
from edgejpq.errors import EdgejpqError
from edgejpq.train import evaluate, load_float_checkpoint, save_float_checkpoint, train_float
from edgejpq.zoo import ZOO_NAMES, build_model

pytestmark = pytest.mark.unit

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` in IDX format, independently of the parser under test."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    return load_dataset("fashion-mnist")


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    rng = np.random.default_rng(1)
    array = (rng.integers(0, 200, size=(5, 3, 4)) - (0 if dtype == np.uint8 else 100)).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    _write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_idx_truncated_refused_naming_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "images.idx"
    _write_idx(path, np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(EdgejpqError, match=r"images\.idx.*truncated at byte offset 109"):
        read_idx(path)


def test_idx_bad_magic_and_header_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(EdgejpqError, match=r"bad\.idx.*magic at byte offset 0"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x42\x01\x00\x00\x00\x01\x00")
    with pytest.raises(EdgejpqError, match=r"bad\.idx.*data type 0x42 at byte offset 2"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(EdgejpqError, match=r"bad\.idx.*truncated at byte offset 6"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02\x05\x06\x07")
    with pytest.raises(EdgejpqError, match=r"bad\.idx.*trailing bytes from byte offset 10"):
        read_idx(path)


def test_idx_corrupt_gzip_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.idx.gz"
    _write_idx(path, np.zeros((100, 8, 8), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(EdgejpqError, match=r"x\.idx\.gz"):
        read_idx(path)


def test_idx_folder_spec(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 6, 6)).astype(np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", (np.arange(12) % 3).astype(np.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 6, 6)).astype(np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", (np.arange(4) % 3).astype(np.uint8))
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.x_train.shape == (12, 1, 6, 6) and ds.x_test.shape == (4, 1, 6, 6)
    assert ds.num_classes == 3 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(EdgejpqError, match=r"t10k-labels-idx1-ubyte"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_fashion_mnist_loads(fashion: Dataset) -> None:
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_train.dtype == np.float32
    assert fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.y_train.shape == (60000,) and fashion.y_test.shape == (10000,)
    assert fashion.num_classes == 10 and fashion.input_shape == (1, 28, 28)
    assert fashion.x_train.min() == 0.0 and fashion.x_train.max() == 1.0
    assert set(np.unique(fashion.y_train)) == set(range(10))


# ---------------------------------------------------------------------------------------------
# digits, npz, other specs


def test_digits_split() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.num_classes == 10 and ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    # Stratified: every class appears in the test split.
    assert set(np.unique(ds.y_test)) == set(range(10))
    again = load_dataset("digits")
    np.testing.assert_array_equal(ds.y_test, again.y_test)


def test_npz_good_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2, 16)) * 100.0
    y = np.arange(50) % 5
    np.savez(tmp_path / "sig.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'sig.npz'}")
    assert ds.x_train.shape == (40, 2, 16) and ds.x_test.shape == (10, 2, 16)
    assert ds.input_shape == (2, 16) and ds.num_classes == 5
    # No rescaling of the user's values.
    assert np.abs(ds.x_train).max() > 1.0
    both = np.sort(np.concatenate([ds.x_train, ds.x_test]).reshape(50, -1), axis=0)
    np.testing.assert_array_equal(both, np.sort(x.astype(np.float32).reshape(50, -1), axis=0))

    np.savez(tmp_path / "img.npz", x=np.ones((6, 1, 4, 4), np.uint8), y=np.zeros(6, np.int32),
             x_test=np.ones((3, 1, 4, 4)), y_test=np.array([0, 1, 2]))
    ds = load_dataset(f"npz:{tmp_path / 'img.npz'}")
    assert ds.x_train.shape == (6, 1, 4, 4) and ds.x_test.shape == (3, 1, 4, 4) and ds.num_classes == 3


def test_npz_missing_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 1, 4, 4)))
    with pytest.raises(EdgejpqError, match=r"d\.npz.*missing key 'y'"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.savez(tmp_path / "e.npz", x=np.zeros((10, 1, 4, 4)), y=np.zeros(10, int), x_test=np.zeros((2, 1, 4, 4)))
    with pytest.raises(EdgejpqError, match=r"e\.npz.*missing key 'y_test'"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")


def test_npz_bad_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "hw.npz", x=np.zeros((10, 28)), y=np.zeros(10, int))
    with pytest.raises(EdgejpqError, match=r"hw\.npz.*'x'.*\(N, C, L\).*\(N, C, H, W\)"):
        load_dataset(f"npz:{tmp_path / 'hw.npz'}")
    np.savez(tmp_path / "fy.npz", x=np.zeros((10, 1, 8)), y=np.zeros(10, np.float32))
    with pytest.raises(EdgejpqError, match=r"fy\.npz.*'y'.*integer"):
        load_dataset(f"npz:{tmp_path / 'fy.npz'}")
    np.savez(tmp_path / "ny.npz", x=np.zeros((10, 1, 8)), y=np.zeros(9, int))
    with pytest.raises(EdgejpqError, match=r"ny\.npz.*'y' holds 9 labels"):
        load_dataset(f"npz:{tmp_path / 'ny.npz'}")


def test_missing_debian_folder_says_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgejpq.data

    monkeypatch.setattr(edgejpq.data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(EdgejpqError, match=r"absent.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_unknown_spec_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(EdgejpqError, match=r"cifar.*fashion-mnist.*digits.*npz:PATH.*mnist1d.*imagefolder:PATH"):
        load_dataset("cifar")
    with pytest.raises(EdgejpqError, match=r"nowhere"):
        load_dataset(f"idx:{tmp_path / 'nowhere'}")


def test_calibration_subset_seeded() -> None:
    ds = load_dataset("digits")
    a = calibration_subset(ds, 32, seed=3)
    assert a.shape == (32, 1, 8, 8)
    np.testing.assert_array_equal(a, calibration_subset(ds, 32, seed=3))
    assert not np.array_equal(a, calibration_subset(ds, 32, seed=4))
    with pytest.raises(EdgejpqError, match="calibration size"):
        calibration_subset(ds, 10**6)


# ---------------------------------------------------------------------------------------------
# MNIST-1D (generated offline, cached)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Fail any attempt to reach the network; record how mnist1d.data.get_dataset is called."""
    import mnist1d.data
    import requests

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    calls: list[dict] = []
    real_get_dataset = mnist1d.data.get_dataset

    def recording_get_dataset(*args: object, **kwargs: object) -> object:
        calls.append(dict(kwargs))
        return real_get_dataset(*args, **kwargs)

    monkeypatch.setattr(mnist1d.data, "get_dataset", recording_get_dataset)
    return calls


def test_mnist1d_generated_offline_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             no_network: list[dict]) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)

    ds = load_dataset("mnist1d")
    assert [c["download"] for c in no_network] == [False] and no_network[0]["regenerate"] is True
    # mnist1d seeds the global generators; the loader must leave the caller's random stream alone.
    assert (random.random(), np.random.random()) == (expected_py, expected_np)
    assert ds.name == "mnist1d" and ds.num_classes == 10 and ds.input_shape == (1, 40)
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.y_test.shape == (1000,)
    assert set(np.unique(ds.y_train)) == set(range(10)) and set(np.unique(ds.y_test)) == set(range(10))
    # Values as the package makes them (centred, unit variance), not rescaled to [0, 1].
    assert ds.x_train.min() < -1.0 and ds.x_train.max() > 1.0
    assert abs(float(ds.x_train.mean())) < 0.05 and 0.9 < float(ds.x_train.std()) < 1.1

    cache = mnist1d_cache_path()
    assert cache.parent == tmp_path / "cache" / "edgejpq" and cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind
    start = time.perf_counter()
    again = load_dataset("mnist1d")
    assert time.perf_counter() - start < 0.5
    assert len(no_network) == 1  # served from the cache, not generated again
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, key), getattr(ds, key))

    cache.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match=r"MNIST-1D cache .*mnist1d-.*\.npz is damaged"):
        regenerated = load_dataset("mnist1d")
    np.testing.assert_array_equal(regenerated.x_test, ds.x_test)
    assert len(no_network) == 2 and np.load(cache)["x_test"].shape == (1000, 1, 40)


def test_mnist1d_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert mnist1d_cache_path().parent == tmp_path / "edgejpq"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says to ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist1d_cache_path().parent == tmp_path / "home" / ".cache" / "edgejpq"


# ---------------------------------------------------------------------------------------------
# image folders


def _write_images(folder: Path, sizes: dict[str, int], mode: str = "L", size: tuple[int, int] = (6, 5),
                  suffix: str = ".png", seed: int = 0) -> dict[Path, np.ndarray]:
    """`sizes[class]` random images of `size` (width, height) per class folder; returns path → pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for cls, count in sizes.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            path = folder / cls / f"{i}{suffix}"
            Image.fromarray(pixels, mode).save(path)
            written[path] = pixels
    return written


def test_imagefolder_grayscale_split(tmp_path: Path) -> None:
    written = _write_images(tmp_path / "shapes", {"zebra": 5, "apple": 5, "mango": 5})
    (tmp_path / "shapes" / "README.txt").write_text("not an image, and not in a class folder")
    (tmp_path / "shapes" / "apple" / "notes.txt").write_text("ignored: not an image suffix")
    ds = load_dataset(f"imagefolder:{tmp_path / 'shapes'}")
    assert ds.name == "shapes" and ds.num_classes == 3 and ds.input_shape == (1, 5, 6)
    assert ds.x_train.shape == (12, 1, 5, 6) and ds.x_test.shape == (3, 1, 5, 6)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    # Stratified 80/20: one test image per class.
    assert sorted(ds.y_test.tolist()) == [0, 1, 2]
    # Classes are labelled in folder-name order: apple 0, mango 1, zebra 2; values are pixels / 255.
    everything = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    for path, pixels in written.items():
        label = ["apple", "mango", "zebra"].index(path.parent.name)
        want = pixels.astype(np.float32)[None] / np.float32(255.0)
        assert any(np.array_equal(x, want) for x in everything[labels == label]), path
    again = load_dataset(f"imagefolder:{tmp_path / 'shapes'}")
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_imagefolder_majority_colour_and_train_test(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _write_images(root / "train", {"cat": 3, "dog": 3}, mode="RGB", size=(4, 4))
    _write_images(root / "train", {"cat": 1}, mode="L", size=(4, 4), suffix=".pgm", seed=1)
    _write_images(root / "test", {"dog": 2}, mode="RGB", size=(4, 4), suffix=".jpg", seed=2)
    ds = load_dataset(f"imagefolder:{root}")
    assert ds.num_classes == 2 and ds.input_shape == (3, 4, 4)
    assert ds.x_train.shape == (7, 3, 4, 4) and ds.x_test.shape == (2, 3, 4, 4)
    assert ds.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1] and ds.y_test.tolist() == [1, 1]
    # The grayscale PGM became RGB with equal channels.
    gray = [x for x in ds.x_train if np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])]
    assert len(gray) >= 1 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0

    mostly_gray = tmp_path / "mostly_gray"
    _write_images(mostly_gray, {"a": 3, "b": 3})
    _write_images(mostly_gray, {"a": 1}, mode="RGB", seed=3, suffix=".ppm")
    assert load_dataset(f"imagefolder:{mostly_gray}").input_shape == (1, 5, 6)


def test_imagefolder_refusals(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _write_images(root, {"a": 5, "b": 5})
    _write_images(root, {"b": 1}, size=(7, 5), seed=9, suffix=".jpeg")
    with pytest.raises(EdgejpqError, match=r"b/0\.jpeg: image is 7x5 pixels .* 10 of the 11 images are 6x5"):
        load_dataset(f"imagefolder:{root}")
    (root / "b" / "0.jpeg").unlink()
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(EdgejpqError, match=r"a/broken\.png: cannot read as an image"):
        load_dataset(f"imagefolder:{root}")
    (root / "a" / "broken.png").unlink()
    (root / "c").mkdir()
    with pytest.raises(EdgejpqError, match=r"class folder .*imgs/c holds no images"):
        load_dataset(f"imagefolder:{root}")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgejpqError, match=r"image folder .*empty has no class sub-folders"):
        load_dataset(f"imagefolder:{empty}")
    with pytest.raises(EdgejpqError, match=r"image folder .*nowhere does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    half = tmp_path / "half"
    _write_images(half / "train", {"a": 2})
    with pytest.raises(EdgejpqError, match=r"half: has a train/ sub-folder but no test/"):
        load_dataset(f"imagefolder:{half}")
    _write_images(half / "test", {"z": 2})
    with pytest.raises(EdgejpqError, match=r"test/z: test class 'z' has no folder in .*train"):
        load_dataset(f"imagefolder:{half}")
    lonely = tmp_path / "lonely"
    _write_images(lonely, {"a": 1, "b": 4})
    with pytest.raises(EdgejpqError, match=r"lonely: cannot make a stratified .*train/ and test/ sub-folders"):
        load_dataset(f"imagefolder:{lonely}")


# ---------------------------------------------------------------------------------------------
# zoo


_IMAGE_SHAPES = [(1, 28, 28), (1, 8, 8), (3, 16, 16)]
_SIGNAL_SHAPES = [(1, 40), (3, 64)]
_ZOO_SHAPES = [(name, shape) for name in ZOO_NAMES
               for shape in (_SIGNAL_SHAPES if name == "cnn1d" else _IMAGE_SHAPES + (_SIGNAL_SHAPES if name == "mlp" else []))]


def test_zoo_names() -> None:
    assert ZOO_NAMES == ("cnn", "resnet8", "mlp", "dscnn", "mobilenet", "cnn1d")


@pytest.mark.parametrize("name,input_shape", _ZOO_SHAPES)
def test_zoo_forward_and_fx_trace(name: str, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(f"zoo:{name}", input_shape, 10).eval()
    x = torch.rand(3, *input_shape)
    out = model(x)
    assert out.shape == (3, 10)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), out, rtol=0, atol=0)


def test_resnet8_param_count_and_shortcuts() -> None:
    model = build_model("zoo:resnet8", (1, 28, 28), 10)
    n = sum(p.numel() for p in model.parameters())
    assert 70_000 <= n <= 85_000
    strided_1x1 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(strided_1x1) == 2 and all(m.stride == (2, 2) for m in strided_1x1)


def test_cnn_param_count() -> None:
    n = sum(p.numel() for p in build_model("zoo:cnn", (1, 28, 28), 10).parameters())
    assert 22_000 <= n <= 26_000


def test_dscnn_mobilenet_cnn1d_param_counts() -> None:
    def count(name: str, shape: tuple[int, ...]) -> int:
        return sum(p.numel() for p in build_model(f"zoo:{name}", shape, 10).parameters())

    assert 20_000 <= count("dscnn", (1, 28, 28)) <= 25_000
    # MobileNetV1-0.25 without the ImageNet head: ~210k weights.
    assert 200_000 <= count("mobilenet", (1, 28, 28)) <= 230_000
    assert 9_000 <= count("cnn1d", (1, 40)) <= 12_000


@pytest.mark.parametrize("name", ["cnn", "resnet8", "dscnn", "mobilenet"])
def test_image_models_refuse_signals(name: str) -> None:
    with pytest.raises(EdgejpqError, match=rf"zoo:{name} needs a 2-D input .*\(1, 40\); use zoo:cnn1d"):
        build_model(f"zoo:{name}", (1, 40), 10)


def test_cnn1d_refuses_images() -> None:
    with pytest.raises(EdgejpqError, match=r"zoo:cnn1d needs a 1-D input of shape \(C, L\), got input shape "
                                           r"\(1, 28, 28\); use zoo:cnn, zoo:resnet8, zoo:dscnn or zoo:mobilenet"):
        build_model("zoo:cnn1d", (1, 28, 28), 10)


def test_zoo_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgejpqError, match=r"zoo:vgg.*zoo:cnn.*zoo:resnet8.*zoo:mlp"):
        build_model("zoo:vgg", (1, 28, 28), 10)
    with pytest.raises(EdgejpqError, match=r"zoo:resnet8 needs a 2-D input"):
        build_model("zoo:resnet8", (2, 100), 4)
    assert build_model("zoo:mlp", (2, 100), 4)(torch.zeros(1, 2, 100)).shape == (1, 4)
    with pytest.raises(EdgejpqError, match=r"nope\.py"):
        build_model(f"{tmp_path / 'nope.py'}:Net", (1, 8, 8), 10)
    (tmp_path / "m.py").write_text("import torch\nclass Other(torch.nn.Module):\n    pass\n")
    with pytest.raises(EdgejpqError, match=r"m\.py has no class 'Net'"):
        build_model(f"{tmp_path / 'm.py'}:Net", (1, 8, 8), 10)
    with pytest.raises(EdgejpqError, match=r"unknown model spec"):
        build_model("resnet8", (1, 8, 8), 10)


def test_user_model_file(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, in_channels, num_classes, width=4):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(in_channels, width, 3)\n"
        "        self.pool = torch.nn.AdaptiveAvgPool2d(1)\n"
        "        self.fc = torch.nn.Linear(width, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))\n"
        "class Fixed(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.flatten(x, 1))\n"
    )
    net = build_model(f"{tmp_path / 'mymodel.py'}:Net", (3, 8, 8), 7)
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 7)
    fixed = build_model(f"{tmp_path / 'mymodel.py'}:Fixed", (1, 8, 8), 10)
    assert fixed(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def test_torch_export_file_read_then_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(_Small().eval(), (torch.zeros(1, 1, 8, 8),)), str(path))
    with pytest.raises(EdgejpqError, match=r"model\.pt2: torch\.export programs are not supported yet .*input "
                                           r"\(1, 1, 8, 8\).*aten\.conv2d\.default.*'conv\.weight'.*file\.py:ClassName"):
        build_model(str(path), (1, 8, 8), 10)
    with pytest.raises(EdgejpqError, match=r"model\.pt2: the exported program takes inputs of shape \(1, 1, 8, 8\), "
                                           r"but the data has samples of shape \(1, 28, 28\)"):
        build_model(str(path), (1, 28, 28), 10)
    with pytest.raises(EdgejpqError, match=r"model\.pt2: the exported program returns shape \(1, 10\), but the "
                                           r"data has 3 classes"):
        build_model(str(path), (1, 8, 8), 3)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(EdgejpqError, match=r"junk\.pt2: cannot read as a torch\.export program"):
        build_model(str(tmp_path / "junk.pt2"), (1, 8, 8), 10)


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torchscript_file_read_then_refused(tmp_path: Path) -> None:
    model = _Small().eval()
    torch.jit.script(model).save(str(tmp_path / "scripted.ts"))
    torch.jit.trace(model, torch.zeros(1, 1, 8, 8)).save(str(tmp_path / "traced.pt"))
    for name in ("scripted.ts", "traced.pt"):
        with pytest.raises(EdgejpqError, match=rf"{name.replace('.', '[.]')}: TorchScript models are not supported "
                                               r".*torch\.fx cannot trace; provide the model as "
                                               r"path/to/file\.py:ClassName"):
            build_model(str(tmp_path / name), (1, 8, 8), 10)
    with pytest.raises(EdgejpqError, match=r"scripted\.ts: the TorchScript model returns shape \(1, 10\), but the "
                                           r"data has 4 classes"):
        build_model(str(tmp_path / "scripted.ts"), (1, 8, 8), 4)
    with pytest.raises(EdgejpqError, match=r"scripted\.ts: the TorchScript model does not accept inputs of shape "
                                           r"\(1, 2, 40\)"):
        build_model(str(tmp_path / "scripted.ts"), (2, 40), 10)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "weights.pt")
    with pytest.raises(EdgejpqError, match=r"weights\.pt: cannot read as a TorchScript archive.*edgejpq export"):
        build_model(str(tmp_path / "weights.pt"), (1, 8, 8), 10)
    with pytest.raises(EdgejpqError, match=r"missing\.ts.*does not exist"):
        build_model(str(tmp_path / "missing.ts"), (1, 8, 8), 10)


# ---------------------------------------------------------------------------------------------
# training and checkpoints


@pytest.mark.slow
def test_train_cnn_one_epoch_fashion_subset(fashion: Dataset) -> None:
    sub = Dataset("fashion-6k", fashion.x_train[:6000], fashion.y_train[:6000], fashion.x_test, fashion.y_test, 10)
    model = build_model("zoo:cnn", sub.input_shape, sub.num_classes)
    seen: list[tuple[int, float, float]] = []
    history = train_float(model, sub, epochs=1, lr=1e-2, batch_size=32, seed=0,
                          on_epoch=lambda e, loss, acc: seen.append((e, loss, acc)))
    assert len(history) == 1 and history[0]["epoch"] == 1
    assert seen == [(1, history[0]["train_loss"], history[0]["test_accuracy"])]
    assert history[0]["test_accuracy"] > 0.60
    assert evaluate(model, sub.x_test, sub.y_test) == history[0]["test_accuracy"]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    ds = load_dataset("digits")
    model = build_model("zoo:resnet8", ds.input_shape, ds.num_classes)
    history = train_float(model, ds, epochs=1, batch_size=256)
    path = tmp_path / "ckpt" / "float.pt"
    save_float_checkpoint(path, model, model_spec="zoo:resnet8", data_spec="digits",
                          input_shape=ds.input_shape, num_classes=ds.num_classes, history=history)
    assert [p.name for p in path.parent.iterdir()] == ["float.pt"]  # no temporary file left behind
    loaded, meta = load_float_checkpoint(path)
    assert meta["model_spec"] == "zoo:resnet8" and meta["data_spec"] == "digits"
    assert meta["input_shape"] == (1, 8, 8) and meta["num_classes"] == 10 and meta["history"] == history
    model.eval()
    x = torch.from_numpy(ds.x_test)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_build_model_seed_fixes_the_initial_weights_and_leaves_the_global_generator() -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        return list(build_model("zoo:cnn", (1, 8, 8), 10, seed=seed).state_dict().values())

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again, other = weights(0), weights(0), weights(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_cli_train_twice_with_one_seed_gives_one_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgejpq.cli import app

    models = []
    for name in ("a.pt", "b.pt"):
        result = CliRunner().invoke(app, ["train", "--model", "zoo:cnn", "--data", "digits", "--epochs", "1",
                                          "--seed", "3", "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        models.append(load_float_checkpoint(tmp_path / name)[0].state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_checkpoint_wrong_format_refused(tmp_path: Path) -> None:
    model = build_model("zoo:mlp", (1, 8, 8), 10)
    path = tmp_path / "c.pt"
    save_float_checkpoint(path, model, model_spec="zoo:mlp", data_spec="digits",
                          input_shape=(1, 8, 8), num_classes=10, history=[])
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = "something.else"
    torch.save(ckpt, path)
    with pytest.raises(EdgejpqError, match=r"c\.pt.*'format'.*something\.else"):
        load_float_checkpoint(path)
    ckpt["format"] = "edgejpq.float_checkpoint"
    ckpt["schema_version"] = 99
    torch.save(ckpt, path)
    with pytest.raises(EdgejpqError, match=r"c\.pt.*'schema_version'.*99"):
        load_float_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgejpqError, match=r"c\.pt"):
        load_float_checkpoint(path)
