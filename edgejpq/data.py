"""Load training data: Fashion-MNIST / any IDX folder, sklearn digits, MNIST-1D, a folder of
images, or a user's .npz.

Every loader returns a `Dataset` of float32 inputs shaped (N, C, H, W) or (N, C, L) and
int64 labels 0..K-1. Anything wrong with the user's files raises EdgejpqError naming the
file, key or byte offset at fault. Nothing is downloaded: MNIST-1D is generated locally.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import random
import tempfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "mnist1d",
    "imagefolder:PATH",
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
    x: np.ndarray, y: np.ndarray, where: str, remedy: str = "provide x_test and y_test explicitly"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # deferred: sklearn import is slow

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
        )
    except ValueError as exc:  # e.g. a class with a single sample cannot be stratified
        raise EdgejpqError(
            f"{where}: cannot make a stratified {int(TEST_FRACTION * 100)}% test split ({exc}); {remedy}"
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
# MNIST-1D (generated locally by the mnist1d package, cached in the user's cache folder)

# The package's default arguments make 5000 samples of length 40 in 10 classes, split 80/20;
# the seed is pinned here so `mnist1d` always means the same data (it is also the package default).
MNIST1D_SEED = 42
MNIST1D_NUM_CLASSES = 10
MNIST1D_SHAPES = {"x_train": (4000, 1, 40), "y_train": (4000,), "x_test": (1000, 1, 40), "y_test": (1000,)}
# Bump when the cached file's layout or content changes, so stale caches are regenerated.
MNIST1D_CACHE_SCHEMA = 1


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/edgejpq, else ~/.cache/edgejpq (the XDG spec says to ignore a relative XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "edgejpq"


def _mnist1d_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        raise EdgejpqError(
            "data spec 'mnist1d' needs the mnist1d package, which generates the data locally: "
            "pip install 'mnist1d>=0.0.2,<0.1' (or reinstall edgejpq, which depends on it)"
        ) from None


def mnist1d_cache_path() -> Path:
    """Where the generated arrays are cached; the name changes with the mnist1d version, seed and layout."""
    version = "".join(c if c.isalnum() or c in ".-" else "_" for c in _mnist1d_version())
    return user_cache_dir() / f"mnist1d-v{MNIST1D_CACHE_SCHEMA}-pkg{version}-seed{MNIST1D_SEED}.npz"


def _mnist1d_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a set of MNIST-1D arrays, or None if they have the documented layout."""
    for key, shape in MNIST1D_SHAPES.items():
        if key not in arrays:
            return f"missing array {key!r}"
        a = arrays[key]
        dtype = np.float32 if key.startswith("x") else np.int64
        if a.shape != shape or a.dtype != dtype:
            return f"array {key!r} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}"
        if key.startswith("x") and not np.isfinite(a).all():
            return f"array {key!r} holds NaN or infinite values"
        if key.startswith("y") and (a.min() < 0 or a.max() >= MNIST1D_NUM_CLASSES):
            return f"array {key!r} holds labels outside 0..{MNIST1D_NUM_CLASSES - 1}"
    return None


def _generate_mnist1d() -> dict[str, np.ndarray]:
    try:
        import mnist1d.data
    except ImportError as exc:
        raise EdgejpqError(f"data spec 'mnist1d': cannot import the mnist1d package ({exc}); "
                           "pip install 'mnist1d>=0.0.2,<0.1'") from exc
    args = mnist1d.data.get_dataset_args()
    args.seed = MNIST1D_SEED
    # make_dataset seeds the global `random` and numpy generators; restore them so that loading
    # data does not change the random numbers the caller draws next.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with tempfile.TemporaryDirectory(prefix="edgejpq-mnist1d-") as tmp:
            # download=False, regenerate=True: generate locally. The package's default downloads a
            # pickle from GitHub; the pickle it writes here is discarded (we cache plain arrays).
            raw = mnist1d.data.get_dataset(args, path=os.path.join(tmp, "mnist1d.pkl"), verbose=False,
                                           download=False, regenerate=True)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # Values are kept as generated (centred, unit variance): only cast, and add the channel axis.
    arrays = {
        "x_train": np.asarray(raw["x"], dtype=np.float32)[:, None, :],
        "y_train": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32)[:, None, :],
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }
    problem = _mnist1d_problem(arrays)
    if problem is not None:
        raise EdgejpqError(f"mnist1d {_mnist1d_version()} generated unexpected data ({problem}); edgejpq expects the "
                           "layout of mnist1d 0.0.2: pip install 'mnist1d>=0.0.2,<0.1'")
    return arrays


def _read_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning if the file exists but is unusable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # np.load raises several types for a damaged file
        problem: str | None = f"unreadable ({type(exc).__name__}: {exc})"
    else:
        problem = _mnist1d_problem(arrays)
    if problem is not None:
        warnings.warn(f"MNIST-1D cache {path} is damaged ({problem}); generating the data again", stacklevel=3)
        return None
    return arrays


def load_mnist1d() -> Dataset:
    """MNIST-1D: (4000, 1, 40) train and (1000, 1, 40) test float32 signals, 10 classes; never downloads."""
    path = mnist1d_cache_path()
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d()
        from edgejpq.artifact import atomic_write_bytes  # deferred: artifact imports pydantic

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Atomic, so a concurrent or interrupted run never leaves a half-written cache behind.
            atomic_write_bytes(path, buffer.getvalue())
        except (OSError, EdgejpqError) as exc:  # the cache only saves time: the data itself is fine
            warnings.warn(f"cannot cache MNIST-1D in {path} ({exc}); it will be generated again next time "
                          "(set XDG_CACHE_HOME to a writable folder)", stacklevel=2)
    return Dataset("mnist1d", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   MNIST1D_NUM_CLASSES)


# ---------------------------------------------------------------------------------------------
# a folder of images, one sub-folder per class

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pnm")
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})
_IMAGEFOLDER_LAYOUT = ("one sub-folder per class holding PNG/JPEG/PGM images (PATH/cat/1.png, PATH/dog/2.png), "
                       "optionally inside train/ and test/ sub-folders")


@dataclass(frozen=True)
class _LoadedImage:
    path: Path
    label: int
    image: Any  # PIL.Image.Image, pixels loaded
    gray: bool


def _class_folders(folder: Path) -> list[Path]:
    # Hidden folders (.git, .ipynb_checkpoints) are not classes.
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(class_dir: Path) -> list[Path]:
    files = sorted(
        (p for p in class_dir.rglob("*")
         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
         and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)),
        key=str,
    )
    if not files:
        raise EdgejpqError(f"class folder {class_dir} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
                           "add images or remove the folder")
    return files


def _read_image(path: Path, label: int) -> _LoadedImage:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode now, inside the try, so a truncated file is reported here
    except Exception as exc:  # Pillow raises OSError, UnidentifiedImageError, SyntaxError, ...
        raise EdgejpqError(f"{path}: cannot read as an image ({type(exc).__name__}: {exc}); "
                           "replace or remove the file") from exc
    if im.mode.startswith(("I", "F")):  # 'I', 'I;16', 'F': 16/32-bit integer or float pixels
        raise EdgejpqError(f"{path}: {im.mode} image (16-bit or floating-point pixels) is not supported; "
                           "save it as 8-bit grayscale or RGB")
    gray = im.mode in _GRAY_MODES
    if im.mode in ("P", "PA"):  # a palette image is grayscale if every palette colour it uses is gray
        rgb = np.asarray(im.convert("RGB"))
        gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return _LoadedImage(path, label, im, gray)


def _images_to_array(images: list[_LoadedImage], channels: int) -> np.ndarray:
    mode = "L" if channels == 1 else "RGB"
    planes = []
    for item in images:
        try:
            pixels = np.asarray(item.image.convert(mode), dtype=np.uint8)
        except Exception as exc:
            raise EdgejpqError(f"{item.path}: cannot convert its {item.image.mode} pixels to {mode} "
                               f"({type(exc).__name__}: {exc}); save it as 8-bit grayscale or RGB") from exc
        planes.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
    return np.stack(planes).astype(np.float32) / np.float32(255.0)


def _check_same_size(images: list[_LoadedImage]) -> None:
    sizes = Counter(item.image.size for item in images)
    (width, height), count = sizes.most_common(1)[0]
    for item in images:
        if item.image.size != (width, height):
            w, h = item.image.size
            raise EdgejpqError(f"{item.path}: image is {w}x{h} pixels (width x height) but {count} of the "
                               f"{len(images)} images are {width}x{height}; all images must share one size "
                               "(resize them first)")


def load_image_folder(folder: str | Path) -> Dataset:
    """Images in one sub-folder per class (sorted by name = label order), optionally under train/ and test/.

    All images become grayscale (1 channel) or RGB (3 channels), whichever most images are (a tie keeps
    colour); values are pixel / 255. Without train/ and test/ a stratified 80/20 split (seed 0) is made.
    """
    root = Path(folder)
    if not root.is_dir():
        raise EdgejpqError(f"image folder {root} does not exist; it must hold {_IMAGEFOLDER_LAYOUT}")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise EdgejpqError(f"data spec imagefolder:{root} needs Pillow to read images: pip install 'pillow>=10'") from None
    train_dir, test_dir = root / "train", root / "test"
    split_given = train_dir.is_dir() or test_dir.is_dir()
    if split_given and not (train_dir.is_dir() and test_dir.is_dir()):
        present, missing = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise EdgejpqError(f"{root}: has a {present}/ sub-folder but no {missing}/; give both train/ and test/ "
                           "(each with one sub-folder per class) or neither (a stratified 80/20 split is then made)")
    class_root = train_dir if split_given else root
    class_dirs = _class_folders(class_root)
    if not class_dirs:
        loose = [p.name for p in class_root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        hint = f" (it holds {len(loose)} images directly: move them into class sub-folders)" if loose else ""
        raise EdgejpqError(f"image folder {class_root} has no class sub-folders{hint}; it must hold {_IMAGEFOLDER_LAYOUT}")
    classes = [d.name for d in class_dirs]
    train_images = [_read_image(p, label) for label, d in enumerate(class_dirs) for p in _image_files(d)]
    test_images: list[_LoadedImage] = []
    if split_given:
        for d in _class_folders(test_dir):
            if d.name not in classes:
                raise EdgejpqError(f"{d}: test class {d.name!r} has no folder in {train_dir}; every test class must "
                                   f"also be a training class (training classes: {', '.join(classes)})")
            test_images += [_read_image(p, classes.index(d.name)) for p in _image_files(d)]
        if not test_images:
            raise EdgejpqError(f"{test_dir}: holds no class sub-folders with images; it must hold {_IMAGEFOLDER_LAYOUT}")
    everything = train_images + test_images
    _check_same_size(everything)
    gray_count = sum(item.gray for item in everything)
    channels = 1 if gray_count > len(everything) - gray_count else 3
    x = _images_to_array(train_images, channels)
    y = np.array([item.label for item in train_images], dtype=np.int64)
    if split_given:
        x_train, y_train = x, y
        x_test = _images_to_array(test_images, channels)
        y_test = np.array([item.label for item in test_images], dtype=np.int64)
    else:
        x_train, x_test, y_train, y_test = _stratified_split(
            x, y, str(root), remedy="add more images per class, or give train/ and test/ sub-folders")
    return Dataset(root.resolve().name or "imagefolder", x_train, y_train, x_test, y_test, len(classes))


# ---------------------------------------------------------------------------------------------
# public entry points


def load_dataset(spec: str) -> Dataset:
    """Load a dataset from a spec: fashion-mnist[:PATH], idx:PATH, digits, npz:PATH, mnist1d or imagefolder:PATH."""
    kind, sep, arg = spec.partition(":")
    if spec == "fashion-mnist":
        return _load_debian_fashion_mnist()
    if spec == "digits":
        return _load_digits()
    if spec == "mnist1d":
        return load_mnist1d()
    if sep and arg:
        if kind == "fashion-mnist":
            return load_idx_folder(arg, "fashion-mnist")
        if kind == "idx":
            return load_idx_folder(arg, Path(arg).name or "idx")
        if kind == "npz":
            return load_npz(arg)
        if kind == "imagefolder":
            return load_image_folder(arg)
    raise EdgejpqError(f"unknown dataset spec {spec!r}; accepted specs: {', '.join(ACCEPTED_SPECS)}")


def calibration_subset(ds: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """Return `n` distinct training inputs chosen with a seeded RNG (in dataset order)."""
    total = ds.x_train.shape[0]
    if not 1 <= n <= total:
        raise EdgejpqError(f"calibration size {n} must be between 1 and the {total} training samples of {ds.name}")
    idx = np.random.default_rng(seed).choice(total, size=n, replace=False)
    # Sorted: the same samples in a stable order, independent of how choice() permutes them.
    return ds.x_train[np.sort(idx)].copy()
