"""Load training data: Fashion-MNIST / any IDX folder, sklearn digits, or a user's .npz.

Every loader returns a `Dataset` of float32 inputs shaped (N, C, H, W) or (N, C, L) and
int64 labels 0..K-1. Anything wrong with the user's files raises EdgejpqError naming the
file, key or byte offset at fault.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgejpq.errors import EdgejpqError

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Seed of every train/test split we make ourselves, so a spec always means the same split.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

ACCEPTED_SPECS = (
    "fashion-mnist",
    "fashion-mnist:PATH",
    "idx:PATH",
    "digits",
    "npz:PATH",
)

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no bool value
class Dataset:
    """A train/test split of float32 inputs (N, C, H, W) or (N, C, L) with int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        # Loaders validate user data with EdgejpqError first; these are internal invariants.
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.float32 or x.ndim not in (3, 4):
                raise ValueError(f"{self.name}: x_{split} must be float32 3-D or 4-D, got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{self.name}: y_{split} must be int64 of shape ({x.shape[0]},), got {y.dtype} {y.shape}"
                )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"{self.name}: x_test shape {self.x_test.shape} does not match x_train {self.x_train.shape}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) or (C, L)."""
        return tuple(int(d) for d in self.x_train.shape[1:])


# ---------------------------------------------------------------------------------------------
# IDX


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """Return the file's (decompressed) bytes and how to describe offsets into them."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read(), "byte offset (in the decompressed data)"
        return path.read_bytes(), "byte offset"
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise EdgejpqError(f"{path}: corrupt or truncated gzip file ({exc}); re-download or re-extract it") from exc
    except OSError as exc:
        raise EdgejpqError(f"{path}: cannot read file ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (plain or .gz) into a native-endian numpy array."""
    path = Path(path)
    raw, where = _read_bytes(path)
    if len(raw) < 4:
        raise EdgejpqError(f"{path}: truncated at {where} {len(raw)}: an IDX header needs 4 magic bytes")
    if raw[0] != 0 or raw[1] != 0:
        raise EdgejpqError(
            f"{path}: bad IDX magic at {where} 0: expected 0x00 0x00, got 0x{raw[0]:02x} 0x{raw[1]:02x} "
            "(not an IDX file?)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise EdgejpqError(f"{path}: unknown IDX data type 0x{code:02x} at {where} 2 (expected one of {known})")
    if ndim == 0:
        raise EdgejpqError(f"{path}: IDX header at {where} 3 says 0 dimensions; expected at least 1")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise EdgejpqError(
            f"{path}: truncated at {where} {len(raw)}: the header of a {ndim}-D IDX file needs {header_len} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header_len
    if actual < expected:
        raise EdgejpqError(
            f"{path}: truncated at {where} {len(raw)}: dims {dims} need {expected} data bytes after the "
            f"{header_len}-byte header, found {actual}; re-download the file"
        )
    if actual > expected:
        raise EdgejpqError(
            f"{path}: {actual - expected} unexpected trailing bytes from {where} {header_len + expected} "
            f"(dims {dims} need exactly {expected} data bytes)"
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header_len)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise EdgejpqError(f"{folder}: missing IDX file {stem}[.gz]; the folder must hold {_idx_file_list()}")


def _idx_file_list() -> str:
    return ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())


def _load_idx_split(folder: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(folder, images_stem)
    labels_path = _find_idx_file(folder, labels_stem)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise EdgejpqError(
            f"{images_path}: expected unsigned-byte images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise EdgejpqError(f"{labels_path}: expected integer labels of shape (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise EdgejpqError(
            f"{labels_path}: holds {labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images"
        )
    if labels.size and labels.min() < 0:
        raise EdgejpqError(f"{labels_path}: negative label {int(labels.min())}; labels must be 0..K-1")
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return x, labels.astype(np.int64)


def load_idx_folder(folder: str | Path, name: str) -> Dataset:
    """Load the four MNIST-style IDX files from `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgejpqError(f"IDX folder {folder} does not exist; it must hold {_idx_file_list()}")
    x_train, y_train = _load_idx_split(folder, _IDX_FILES["train_images"], _IDX_FILES["train_labels"])
    x_test, y_test = _load_idx_split(folder, _IDX_FILES["test_images"], _IDX_FILES["test_labels"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise EdgejpqError(
            f"{folder}: train images are {x_train.shape[2:]} but test images are {x_test.shape[2:]}; they must match"
        )
    if x_train.shape[0] == 0:
        raise EdgejpqError(f"{folder}: the training IDX files hold no samples")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def _load_debian_fashion_mnist() -> Dataset:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        raise EdgejpqError(
            f"Fashion-MNIST folder {DEBIAN_FASHION_MNIST_DIR} not found: run `apt-get install dataset-fashion-mnist`, "
            "or pass fashion-mnist:PATH for a folder holding the four IDX files"
        )
    return load_idx_folder(DEBIAN_FASHION_MNIST_DIR, "fashion-mnist")


# ---------------------------------------------------------------------------------------------
# digits and npz


def _stratified_split(
    x: np.ndarray, y: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # deferred: sklearn import is slow

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
        )
    except ValueError as exc:  # e.g. a class with a single sample cannot be stratified
        raise EdgejpqError(
            f"{where}: cannot make a stratified {int(TEST_FRACTION * 100)}% test split ({exc}); "
            "provide x_test and y_test explicitly"
        ) from exc
    return x_train, x_test, y_train, y_test


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # bundled with sklearn: works offline

    bunch = load_digits()
    # Pixel values are 0..16; scale to [0, 1] like the IDX images.
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = _stratified_split(x, y, "digits")
    return Dataset("digits", x_train, y_train, x_test, y_test, int(y.max()) + 1)


def _check_npz_x(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim not in (3, 4):
        raise EdgejpqError(
            f"{path}: key {key!r} has shape {x.shape}; expected (N, C, L) for 1-D signals or (N, C, H, W) for "
            "images (for single-channel images of shape (N, H, W) add the channel axis: x[:, None])"
        )
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise EdgejpqError(f"{path}: key {key!r} has dtype {x.dtype}; expected a real numeric array")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise EdgejpqError(f"{path}: key {key!r} contains NaN or infinite values (after casting to float32)")
    return x


def _check_npz_y(path: Path, key: str, y: np.ndarray, n: int, x_key: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise EdgejpqError(
            f"{path}: key {key!r} has {y.dtype} shape {y.shape}; expected integer class labels of shape ({n},)"
        )
    if y.shape[0] != n:
        raise EdgejpqError(f"{path}: key {key!r} holds {y.shape[0]} labels but {x_key!r} holds {n} samples")
    if y.size and y.min() < 0:
        raise EdgejpqError(f"{path}: key {key!r} contains label {int(y.min())}; labels must be 0..K-1")
    return y.astype(np.int64)


def load_npz(path: str | Path) -> Dataset:
    """Load `x`, `y` (and optional `x_test`, `y_test`) from a .npz file; x is cast to float32 unscaled."""
    path = Path(path)
    if not path.is_file():
        raise EdgejpqError(f"npz file {path} does not exist")
    try:
        # allow_pickle=False: a data file must not be able to run code.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # np.load raises several types for a bad file
        raise EdgejpqError(
            f"{path}: cannot read as .npz ({exc}); save it with numpy.savez(path, x=..., y=...)"
        ) from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise EdgejpqError(
                f"{path}: missing key {key!r} (found {sorted(arrays)}); expected x of shape (N, C, L) or "
                "(N, C, H, W) and y of shape (N,) with integer labels 0..K-1"
            )
    has_x_test, has_y_test = "x_test" in arrays, "y_test" in arrays
    if has_x_test != has_y_test:
        missing = "y_test" if has_x_test else "x_test"
        present = "x_test" if has_x_test else "y_test"
        raise EdgejpqError(f"{path}: has {present!r} but missing key {missing!r}; give both or neither")

    x = _check_npz_x(path, "x", arrays["x"])
    if x.shape[0] == 0:
        raise EdgejpqError(f"{path}: key 'x' holds no samples")
    y = _check_npz_y(path, "y", arrays["y"], x.shape[0], "x")
    if has_x_test:
        x_train, y_train = x, y
        x_test = _check_npz_x(path, "x_test", arrays["x_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise EdgejpqError(
                f"{path}: key 'x_test' has sample shape {x_test.shape[1:]}, expected {x.shape[1:]} like 'x'"
            )
        y_test = _check_npz_y(path, "y_test", arrays["y_test"], x_test.shape[0], "x_test")
    else:
        x_train, x_test, y_train, y_test = _stratified_split(x, y, str(path))
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(path.stem, x_train, y_train, x_test, y_test, num_classes)


# ---------------------------------------------------------------------------------------------
# public entry points


def load_dataset(spec: str) -> Dataset:
    """Load a dataset from a spec: fashion-mnist[:PATH], idx:PATH, digits or npz:PATH."""
    kind, sep, arg = spec.partition(":")
    if spec == "fashion-mnist":
        return _load_debian_fashion_mnist()
    if spec == "digits":
        return _load_digits()
    if sep and arg:
        if kind == "fashion-mnist":
            return load_idx_folder(arg, "fashion-mnist")
        if kind == "idx":
            return load_idx_folder(arg, Path(arg).name or "idx")
        if kind == "npz":
            return load_npz(arg)
    raise EdgejpqError(f"unknown dataset spec {spec!r}; accepted specs: {', '.join(ACCEPTED_SPECS)}")


def calibration_subset(ds: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """Return `n` distinct training inputs chosen with a seeded RNG (in dataset order)."""
    total = ds.x_train.shape[0]
    if not 1 <= n <= total:
        raise EdgejpqError(f"calibration size {n} must be between 1 and the {total} training samples of {ds.name}")
    idx = np.random.default_rng(seed).choice(total, size=n, replace=False)
    # Sorted: the same samples in a stable order, independent of how choice() permutes them.
    return ds.x_train[np.sort(idx)].copy()
