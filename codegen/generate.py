"""Write a model's firmware sources: C model, weights, kernels, golden test, runner, build files.

Generation is atomic: every file is written into a temporary sibling folder that is renamed into
place once complete. An existing output folder is replaced only if it holds the marker file of a
previous edgejpq output (or is empty); anything else is refused and left untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgejpq.artifact import QuantizedModel
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import run_reference
from edgejpq.resources import templates_dir

from codegen.env import render
from codegen.lower import ModelContext, lower_model
from codegen.literals import c_identifier, is_c_identifier

MARKER = "edgejpq-generated.txt"
DEFAULT_GOLDEN_SAMPLES = 4
GOLDEN_SEED = 0
COMMON_HEADERS = ("ejq_kernels.h", "ejq_fixedpoint.h")
BASE_KERNEL_SET = "portable"


@dataclass(frozen=True)
class GeneratedSources:
    """What generate_sources wrote: file names are relative to out_dir."""

    name: str
    out_dir: Path
    files: tuple[str, ...]
    kernels: str
    model_hash: str
    golden_count: int  # golden input/output vector pairs in <name>_golden.c

    @property
    def library_sources(self) -> tuple[str, ...]:
        """The .c files of the model library (model, weights, kernels), without test and runner."""
        return tuple(f for f in self.files if f.endswith(".c") and f not in (self.test_source, self.golden_source,
                                                                             self.runner_source))

    @property
    def header(self) -> str:
        return f"{self.name}_model.h"

    @property
    def test_source(self) -> str:
        return f"{self.name}_test.c"

    @property
    def golden_source(self) -> str:
        return f"{self.name}_golden.c"

    @property
    def runner_source(self) -> str:
        return f"{self.name}_runner.c"


def kernel_sets() -> tuple[str, ...]:
    """The kernel sets shipped in firmware_templates/kernels/ (e.g. "portable", "dsp")."""
    root = templates_dir() / "kernels"
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))))


def kernel_set_files(kernels: str) -> dict[str, Path]:
    """File name → source of every kernel file of a set.

    A set other than the portable one overrides the portable files it holds and takes the others
    (pooling, add, concat, copy and their headers) from the portable set, so each piece of C
    exists once.
    """
    root = templates_dir() / "kernels"
    files = {p.name: p for p in sorted((root / BASE_KERNEL_SET).iterdir()) if p.suffix in (".c", ".h")}
    if kernels != BASE_KERNEL_SET:
        files.update({p.name: p for p in sorted((root / kernels).iterdir()) if p.suffix in (".c", ".h")})
    return files


# Support files of a kernel set: what each of its kernel files calls into, compiled once into a firmware
# however many kernels call it (the DSP convolutions of every bit-width share the depthwise machinery,
# the window-to-column conversion and the general requantization path).
SUPPORT_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "dsp": {**{f"ejq_conv2d_w{b}.c": ("ejq_dsp_dw.c", "ejq_dsp_im2col.c", "ejq_dsp_rq.c") for b in (8, 4, 2)},
            **{f"ejq_dwconv2d_w{b}.c": ("ejq_dsp_dw.c",) for b in (8, 4, 2)}},
}


def kernel_set_sources(kernels: str, entry_sources: Iterable[str]) -> tuple[str, ...]:
    """The .c files of set `kernels` a firmware calling `entry_sources` (codegen.lower.KERNEL_SOURCES files)
    compiles: those and their support files, sorted."""
    support = SUPPORT_SOURCES.get(kernels, {})
    entries = set(entry_sources)
    return tuple(sorted(entries.union(*(support.get(source, ()) for source in entries))))


def _resolve_name(model: QuantizedModel, name: str | None) -> str:
    if name is None:
        return c_identifier(model.name)
    if not is_c_identifier(name):
        raise EdgejpqError(f"--name {name!r} is not a valid C identifier (letters, digits and _, not starting "
                           f"with a digit, not a C keyword); try {c_identifier(name)!r}")
    return name


def _golden(model: QuantizedModel, golden_inputs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    shape = model.input_info.shape
    if golden_inputs is None:
        rng = np.random.default_rng(GOLDEN_SEED)
        golden_inputs = rng.integers(-128, 128, size=(DEFAULT_GOLDEN_SAMPLES, *shape), dtype=np.int8)
    x = np.asarray(golden_inputs)
    if x.ndim == 3:
        x = x[None]
    if x.dtype != np.int8 or tuple(x.shape[1:]) != shape or len(x) < 1:
        raise EdgejpqError(f"golden inputs must be int8 of shape (N >= 1, {', '.join(map(str, shape))}) for model "
                           f"{model.name}, got {x.dtype}{tuple(x.shape)}")
    outputs = run_reference(model, x)[model.output]
    return x.reshape(len(x), -1), outputs.reshape(len(x), -1)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise EdgejpqError(f"{out_dir}: exists and is not a folder; choose another output folder")
    if out_dir.is_dir() and not (out_dir / MARKER).is_file() and any(out_dir.iterdir()):
        raise EdgejpqError(f"{out_dir}: the folder exists and is not a previous edgejpq output (no {MARKER}); "
                           f"refusing to replace it: choose another output folder or remove it yourself")


def _render_files(ctx: ModelContext, golden_in: np.ndarray, golden_out: np.ndarray) -> dict[str, str]:
    kernel_dir = templates_dir() / "kernels"
    set_files = kernel_set_files(ctx.kernels)
    headers = {h: kernel_dir / h for h in COMMON_HEADERS}
    headers.update({name: path for name, path in set_files.items() if name.endswith(".h")})
    sources = {s: set_files.get(s, kernel_dir / ctx.kernels / s)
               for s in kernel_set_sources(ctx.kernels, ctx.kernel_sources)}
    n = ctx.name
    files: dict[str, str] = {
        f"{n}_model.h": render("model.h.j2", m=ctx),
        f"{n}_model.c": render("model.c.j2", m=ctx),
        f"{n}_weights.c": render("weights.c.j2", m=ctx),
        f"{n}_golden.c": render("golden.c.j2", m=ctx, golden_inputs=[tuple(r) for r in golden_in.tolist()],
                                golden_outputs=[tuple(r) for r in golden_out.tolist()]),
        f"{n}_test.c": render("test_main.c.j2", m=ctx),
        f"{n}_runner.c": render("runner.c.j2", m=ctx),
        "Makefile": render("Makefile.j2", m=ctx, headers=sorted(headers)),
        "CMakeLists.txt": render("CMakeLists.txt.j2", m=ctx),
    }
    for file_name, path in {**headers, **sources}.items():
        if not path.is_file():
            raise EdgejpqError(f"kernel set {ctx.kernels!r} has no {file_name} ({path}): the installation is "
                               f"incomplete, reinstall edgejpq")
        source = str(path.relative_to(kernel_dir))
        files[file_name] = render("kernel_file.j2", m=ctx, source=source, text=path.read_text())
    files[MARKER] = render("marker.txt.j2", m=ctx, files=sorted([*files, MARKER]))
    return files


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    replaced = out_dir.exists()
    if replaced:
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if replaced:
            os.rename(old, out_dir)
        raise
    if replaced:
        shutil.rmtree(old, ignore_errors=True)


def generate_sources(model: QuantizedModel, out_dir: Path, *, name: str | None = None, kernels: str = "portable",
                     golden_inputs: np.ndarray | None = None) -> GeneratedSources:
    """Write the C sources of `model` into `out_dir` (replacing a previous edgejpq output there).

    `name` prefixes every file and C symbol (default: the model's name made a C identifier);
    `kernels` picks the kernel set; `golden_inputs` (N, H, W, C) int8 become the golden test's
    vectors (default: 4 inputs from a seeded generator).
    """
    out_dir = Path(out_dir).absolute()
    c_name = _resolve_name(model, name)
    available = kernel_sets()
    if kernels not in available:
        raise EdgejpqError(f"kernel set {kernels!r} does not exist; available: {', '.join(available)}")
    ctx = lower_model(model, c_name, kernels)
    golden_in, golden_out = _golden(model, golden_inputs)
    files = _render_files(ctx, golden_in, golden_out)

    def fill(folder: Path) -> None:
        for file_name, text in files.items():
            (folder / file_name).write_text(text)

    write_output_folder(out_dir, fill, "the generated sources")
    return GeneratedSources(name=c_name, out_dir=out_dir, files=tuple(sorted(files)), kernels=kernels,
                            model_hash=model.short_hash, golden_count=len(golden_in))


def write_output_folder(out_dir: Path, fill: Callable[[Path], None], what: str) -> None:
    """Build an output folder atomically: `fill` writes into a temporary sibling folder, which then
    replaces `out_dir` (only a previous edgejpq output, marked by MARKER, or an empty folder)."""
    _check_out_dir(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise EdgejpqError(f"{parent}: cannot create the output folder there ({exc.strerror}); "
                           f"choose a writable location") from None
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; generated sources are ordinary files
        _check_out_dir(out_dir)  # again, right before the swap
        _swap_into_place(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgejpqError(f"{out_dir}: cannot write {what} ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
