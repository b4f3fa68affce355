"""The QuantizedModel file (`.ejq`): the single input of the generator, reference and emulator.

On disk an `.ejq` is a zip archive holding
  manifest.json  the graph: tensors (shape H×W×C channels-last, scale, zero point), ops in
                 execution order with their integer parameters, memory layout, provenance,
                 schema version, and a sha256 content hash over manifest + arrays
  arrays.npz     the arrays (packed weights, int32 bias / multipliers / shifts), no pickles

Loading validates, in order: zip members, JSON syntax, schema version, field types (pydantic,
naming the field path), graph consistency and shapes, array dtypes/shapes/value ranges, the
accumulator overflow proof, the memory layout and the content hash. Every refusal names the
field or array at fault.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import numpy as np
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from edgejpq import __version__
from edgejpq.errors import EdgejpqError
from edgejpq.quant.packing import SUPPORTED_BITS, row_bytes

FORMAT = "edgejpq.quantized_model"
SCHEMA_VERSION = 1
ACCUMULATOR_LIMIT = (1 << 31) - 1

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TensorInfo:
    __pydantic_config__ = _STRICT
    name: str
    shape: tuple[int, int, int]  # (H, W, C), channels-last
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


@dataclass(frozen=True)
class WeightRun:
    """Output channels [start, start + count) share one bit-width; their packed rows start at byte `offset`."""

    __pydantic_config__ = _STRICT
    start: int
    count: int
    bits: int
    offset: int


@dataclass(frozen=True)
class Conv2D:
    """Conv2d (or depthwise when `depthwise`), int8 in/out, weights per output channel in runs."""

    __pydantic_config__ = _STRICT
    kind: Literal["conv2d"]
    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    depthwise: bool
    runs: tuple[WeightRun, ...]
    act_min: int
    act_max: int
    source: str = ""


@dataclass(frozen=True)
class FullyConnected:
    """Fully connected layer. `rounding` "single" requantizes as TFLite's int8 FULLY_CONNECTED kernels
    do ((acc * m + 2^(30 - s)) >> (31 - s), round half up, one rounding); "double" (the default) as
    every other edgejpq op (TFLite's reference MultiplyByQuantizedMultiplier)."""

    __pydantic_config__ = _STRICT
    kind: Literal["fully_connected"]
    name: str
    input: str
    output: str
    runs: tuple[WeightRun, ...]
    act_min: int
    act_max: int
    source: str = ""
    rounding: Literal["double", "single"] = "double"


@dataclass(frozen=True)
class Pool:
    """Max or average pooling; output keeps the input's scale and zero point.

    Average pooling divides by the number of in-bounds elements (TFLite's semantics); a global
    average pool is a Pool whose kernel is the whole input plane.
    """

    __pydantic_config__ = _STRICT
    kind: Literal["pool"]
    name: str
    input: str
    output: str
    mode: Literal["max", "avg"]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    act_min: int
    act_max: int
    source: str = ""


@dataclass(frozen=True)
class Add:
    """Residual add requantizing both inputs, as TFLite's int8 ADD (left shift 20)."""

    __pydantic_config__ = _STRICT
    kind: Literal["add"]
    name: str
    inputs: tuple[str, str]
    output: str
    left_shift: int
    input_multipliers: tuple[int, int]
    input_shifts: tuple[int, int]
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int
    source: str = ""


@dataclass(frozen=True)
class ConcatInput:
    __pydantic_config__ = _STRICT
    copy: bool  # identical scale and zero point: plain byte copy
    multiplier: int
    shift: int


@dataclass(frozen=True)
class Concat:
    """Concatenation along channels; each input is copied or requantized to the output's scale."""

    __pydantic_config__ = _STRICT
    kind: Literal["concat"]
    name: str
    inputs: tuple[str, ...]
    output: str
    requant: tuple[ConcatInput, ...]
    source: str = ""


@dataclass(frozen=True)
class Reshape:
    """Flatten/reshape: the same bytes seen with another shape (no data movement)."""

    __pydantic_config__ = _STRICT
    kind: Literal["reshape"]
    name: str
    input: str
    output: str
    source: str = ""


Op = Annotated[Union[Conv2D, FullyConnected, Pool, Add, Concat, Reshape], Field(discriminator="kind")]
WEIGHTED_OPS = (Conv2D, FullyConnected)


@dataclass(frozen=True)
class Placement:
    """Where a tensor lives: in the arena at `offset`, or in the caller's input/output buffer."""

    __pydantic_config__ = _STRICT
    region: Literal["arena", "input", "output"]
    offset: int


@dataclass(frozen=True)
class MemoryLayout:
    __pydantic_config__ = _STRICT
    arena_bytes: int
    lower_bound: int
    strategy: str
    placements: dict[str, Placement]


@dataclass(frozen=True)
class QuantizedModel:
    """An integer-only model: graph, integer parameters, arrays and memory layout."""

    name: str
    input: str
    output: str
    tensors: dict[str, TensorInfo]
    ops: tuple[Op, ...]
    layout: MemoryLayout
    arrays: Mapping[str, np.ndarray] = field(repr=False)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def input_info(self) -> TensorInfo:
        return self.tensors[self.input]

    @property
    def output_info(self) -> TensorInfo:
        return self.tensors[self.output]

    @property
    def weight_bytes(self) -> int:
        """Bytes of packed weights (what the search's flash figure counts as weights)."""
        return sum(int(self.arrays[f"{op.name}.weights"].size) for op in self.ops if isinstance(op, WEIGHTED_OPS))

    @property
    def constant_bytes(self) -> int:
        """Bytes of all constant arrays placed in flash (weights, bias, multipliers, shifts)."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    @property
    def content_hash(self) -> str:
        return compute_hash(_manifest_body(self), self.arrays)

    @property
    def short_hash(self) -> str:
        return self.content_hash[:16]

    def with_layout(self, layout: MemoryLayout) -> "QuantizedModel":
        return replace(self, layout=layout)


# --------------------------------------------------------------------------- helpers on ops


def op_inputs(op: Op) -> tuple[str, ...]:
    return tuple(op.inputs) if isinstance(op, (Add, Concat)) else (op.input,)


def weight_k(op: Conv2D | FullyConnected, tensors: Mapping[str, TensorInfo]) -> int:
    """Number of weights in one output channel's row."""
    if isinstance(op, FullyConnected):
        return tensors[op.input].size
    kh, kw = op.kernel
    return kh * kw * (1 if op.depthwise else tensors[op.input].shape[2])


def conv_output_hw(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int, int, int]) -> tuple[int, int]:
    top, bottom, left, right = padding
    return ((in_hw[0] + top + bottom - kernel[0]) // stride[0] + 1,
            (in_hw[1] + left + right - kernel[1]) // stride[1] + 1)


def expected_arrays(op: Op, tensors: Mapping[str, TensorInfo]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The arrays an op owns: name → (dtype, shape)."""
    if not isinstance(op, WEIGHTED_OPS):
        return {}
    c_out = tensors[op.output].shape[2]
    k = weight_k(op, tensors)
    total = sum(run.count * row_bytes(k, run.bits) for run in op.runs)
    return {
        f"{op.name}.weights": ("uint8", (total,)),
        f"{op.name}.bias": ("int32", (c_out,)),
        f"{op.name}.multiplier": ("int32", (c_out,)),
        f"{op.name}.shift": ("int32", (c_out,)),
    }


def accumulator_bound(op: Conv2D | FullyConnected, arrays: Mapping[str, np.ndarray],
                      tensors: Mapping[str, TensorInfo]) -> np.ndarray:
    """Per output channel, the largest |partial sum| any kernel can form, as int64.

    A kernel may accumulate sum(w * (x - zp)) directly, or sum(w * x) and add -zp * sum(w)
    later (the DSP kernels do); with |x - zp| <= 255, |x| <= 128 and |zp| <= 128 every partial
    sum of either form is bounded by 256 * sum|w| + |bias|.
    """
    from edgejpq.quant.packing import unpack_rows  # local: packing is light, avoids a cycle

    k = weight_k(op, tensors)
    packed = arrays[f"{op.name}.weights"]
    bias = arrays[f"{op.name}.bias"].astype(np.int64)
    bound = np.zeros(tensors[op.output].shape[2], dtype=np.int64)
    for run in op.runs:
        nbytes = row_bytes(k, run.bits)
        rows = packed[run.offset: run.offset + run.count * nbytes].reshape(run.count, nbytes)
        w = unpack_rows(rows, run.bits, k).astype(np.int64)
        bound[run.start: run.start + run.count] = 256 * np.abs(w).sum(axis=1)
    return bound + np.abs(bias)


# --------------------------------------------------------------------------- serialization

_OPS_ADAPTER = TypeAdapter(tuple[Op, ...])
_TENSORS_ADAPTER = TypeAdapter(dict[str, TensorInfo])
_LAYOUT_ADAPTER = TypeAdapter(MemoryLayout)


def _manifest_body(model: QuantizedModel) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": model.name,
        "input": model.input,
        "output": model.output,
        "tensors": {k: asdict(v) for k, v in model.tensors.items()},
        "ops": [_op_record(op) for op in model.ops],
        "layout": asdict(model.layout),
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sorted(model.arrays.items())},
        "provenance": model.provenance,
    }


# Fields added after schema version 1 shipped, omitted from the manifest at their default so that the
# files (and content hashes) of models that do not use them stay what they were.
_OMITTED_DEFAULTS: dict[str, Any] = {"rounding": "double"}


def _op_record(op: Op) -> dict[str, Any]:
    record = asdict(op)
    for key, default in _OMITTED_DEFAULTS.items():
        if key in record and record[key] == default:
            del record[key]
    return record


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(body: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256(_canonical(json.loads(json.dumps(body))))
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(_canonical([name, str(array.dtype), list(array.shape)]))
        digest.update(array.tobytes())
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    if not path.parent.exists():
        raise EdgejpqError(f"{path}: the folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise EdgejpqError(f"{path}: cannot write into {path.parent} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: QuantizedModel, path: str | os.PathLike[str]) -> str:
    """Validate and write `model` to `path` atomically; returns the content hash."""
    validate_model(model, where=str(path))
    body = _manifest_body(model)
    content_hash = compute_hash(body, model.arrays)
    manifest = dict(body, content_hash=content_hash)
    arrays_buf = io.BytesIO()
    np.savez(arrays_buf, **{k: np.ascontiguousarray(v) for k, v in model.arrays.items()})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        archive.writestr("arrays.npz", arrays_buf.getvalue())
    atomic_write_bytes(Path(path), out.getvalue())
    return content_hash


def _format_validation_error(where: str, section: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in (section, *first["loc"]))
    return f"{where}: manifest field {loc}: {first['msg']} (got {first.get('input')!r:.80})"


def load_model(path: str | os.PathLike[str]) -> QuantizedModel:
    """Read and fully validate an `.ejq` file; raises EdgejpqError naming what is wrong."""
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise EdgejpqError(f"{where}: no such model file")
    try:
        with zipfile.ZipFile(p) as archive:
            names = set(archive.namelist())
            for member in ("manifest.json", "arrays.npz"):
                if member not in names:
                    raise EdgejpqError(f"{where}: not a complete .ejq file (member {member} missing)")
            manifest_bytes = archive.read("manifest.json")
            arrays_bytes = archive.read("arrays.npz")
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise EdgejpqError(f"{where}: not a readable .ejq file (truncated or corrupted zip: {exc})") from None
    except zipfile.error as exc:  # CRC failures surface as zipfile.BadZipFile / zlib errors
        raise EdgejpqError(f"{where}: corrupted .ejq file ({exc})") from None
    except OSError as exc:
        raise EdgejpqError(f"{where}: cannot read ({exc})") from None
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgejpqError(f"{where}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise EdgejpqError(f"{where}: manifest.json must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise EdgejpqError(f"{where}: manifest field format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgejpqError(
            f"{where}: manifest field schema_version is {version!r}; this edgejpq {__version__} reads "
            f"version {SCHEMA_VERSION}: re-export the model with this version")
    for key in ("name", "input", "output", "tensors", "ops", "layout", "arrays", "content_hash"):
        if key not in manifest:
            raise EdgejpqError(f"{where}: manifest field {key} is missing")
    try:
        tensors = _TENSORS_ADAPTER.validate_python(manifest["tensors"])
    except ValidationError as exc:
        raise EdgejpqError(_format_validation_error(where, "tensors", exc)) from None
    try:
        ops = _OPS_ADAPTER.validate_python(manifest["ops"])
    except ValidationError as exc:
        raise EdgejpqError(_format_validation_error(where, "ops", exc)) from None
    try:
        layout = _LAYOUT_ADAPTER.validate_python(manifest["layout"])
    except ValidationError as exc:
        raise EdgejpqError(_format_validation_error(where, "layout", exc)) from None
    try:
        with np.load(io.BytesIO(arrays_bytes), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # numpy raises many types for a damaged npz
        raise EdgejpqError(f"{where}: arrays.npz is damaged ({type(exc).__name__}: {exc})") from None
    declared = manifest["arrays"]
    if not isinstance(declared, dict) or set(declared) != set(arrays):
        raise EdgejpqError(f"{where}: arrays.npz holds {sorted(arrays)} but the manifest declares "
                           f"{sorted(declared) if isinstance(declared, dict) else declared!r}")
    for name, array in arrays.items():
        spec = declared[name]
        if spec != {"dtype": str(array.dtype), "shape": list(array.shape)}:
            raise EdgejpqError(f"{where}: array {name} is {array.dtype}{list(array.shape)} but the manifest "
                               f"declares {spec}")
    model = QuantizedModel(
        name=str(manifest["name"]), input=str(manifest["input"]), output=str(manifest["output"]),
        tensors=tensors, ops=ops, layout=layout, arrays=arrays,
        provenance=dict(manifest.get("provenance") or {}),
    )
    validate_model(model, where=where)
    actual = model.content_hash
    if actual != manifest["content_hash"]:
        raise EdgejpqError(f"{where}: content hash mismatch (manifest says {str(manifest['content_hash'])[:16]}…, "
                           f"contents hash to {actual[:16]}…): the file was modified or corrupted")
    return model


# --------------------------------------------------------------------------- validation


def _fail(where: str, message: str) -> None:
    raise EdgejpqError(f"{where}: {message}")


def validate_model(model: QuantizedModel, where: str = "model") -> None:
    """Check graph, shapes, arrays, value ranges, the overflow proof and the memory layout."""
    tensors = model.tensors
    for name, t in tensors.items():
        if t.name != name:
            _fail(where, f"tensor {name}: its name field says {t.name!r}")
        if any(d < 1 for d in t.shape):
            _fail(where, f"tensor {name}: shape {t.shape} has a dimension < 1")
        if not (t.scale > 0 and np.isfinite(t.scale)):
            _fail(where, f"tensor {name}: scale {t.scale} must be a positive finite number")
        if not -128 <= t.zero_point <= 127:
            _fail(where, f"tensor {name}: zero_point {t.zero_point} outside int8 [-128, 127]")
    for key in ("input", "output"):
        if getattr(model, key) not in tensors:
            _fail(where, f"{key} tensor {getattr(model, key)!r} is not among the tensors")
    produced: set[str] = {model.input}
    names: set[str] = set()
    for index, op in enumerate(model.ops):
        label = f"op {index} ({op.name})"
        if op.name in names:
            _fail(where, f"{label}: duplicate op name")
        names.add(op.name)
        for tensor in (*op_inputs(op), op.output):
            if tensor not in tensors:
                _fail(where, f"{label}: unknown tensor {tensor!r}")
        for tensor in op_inputs(op):
            if tensor not in produced:
                _fail(where, f"{label}: reads tensor {tensor!r} before any op writes it")
        if op.output in produced:
            _fail(where, f"{label}: writes tensor {op.output!r}, which is already written")
        produced.add(op.output)
        _validate_op(where, label, op, model)
    if model.output not in produced or model.output == model.input:
        _fail(where, f"output tensor {model.output!r} is not written by any op")
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for op in model.ops:
        expected.update(expected_arrays(op, tensors))
    missing = sorted(set(expected) - set(model.arrays))
    extra = sorted(set(model.arrays) - set(expected))
    if missing or extra:
        _fail(where, f"arrays missing {missing} / unexpected {extra}")
    for name, (dtype, shape) in expected.items():
        array = model.arrays[name]
        if str(array.dtype) != dtype or tuple(array.shape) != shape:
            _fail(where, f"array {name} is {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}")
    for op in model.ops:
        if isinstance(op, WEIGHTED_OPS):
            _validate_weighted_arrays(where, op, model)
    _validate_layout(where, model)


def _check_act(where: str, label: str, act_min: int, act_max: int) -> None:
    if not -128 <= act_min <= act_max <= 127:
        _fail(where, f"{label}: activation clamp [{act_min}, {act_max}] must satisfy -128 <= min <= max <= 127")


def _validate_op(where: str, label: str, op: Op, model: QuantizedModel) -> None:
    tensors = model.tensors
    out = tensors[op.output].shape
    if isinstance(op, (Conv2D, Pool)):
        inp = tensors[op.input].shape
        if min(op.kernel) < 1 or min(op.stride) < 1 or min(op.padding) < 0:
            _fail(where, f"{label}: kernel {op.kernel}, stride {op.stride} must be >= 1 and padding {op.padding} >= 0")
        hw = conv_output_hw(inp[:2], op.kernel, op.stride, op.padding)
        if min(hw) < 1:
            _fail(where, f"{label}: kernel {op.kernel} does not fit input {inp} with padding {op.padding}")
        top, bottom, left, right = op.padding
        if isinstance(op, Pool) and (max(top, bottom) >= op.kernel[0] or max(left, right) >= op.kernel[1]):
            _fail(where, f"{label}: pooling padding {op.padding} must be smaller than the kernel {op.kernel} "
                         "(a window would hold no input)")
        channels_same = isinstance(op, Pool) or op.depthwise
        if (hw[0], hw[1]) != out[:2] or (channels_same and inp[2] != out[2]):
            _fail(where, f"{label}: output tensor {op.output} has shape {out}, expected {(*hw, out[2])}")
        if isinstance(op, Pool) and (tensors[op.input].scale, tensors[op.input].zero_point) != (
                tensors[op.output].scale, tensors[op.output].zero_point):
            _fail(where, f"{label}: pooling must keep the input's scale and zero point")
        _check_act(where, label, op.act_min, op.act_max)
    if isinstance(op, FullyConnected):
        if out[:2] != (1, 1):
            _fail(where, f"{label}: output tensor {op.output} must be 1x1xN, got {out}")
        _check_act(where, label, op.act_min, op.act_max)
    if isinstance(op, WEIGHTED_OPS):
        position = 0
        offset = 0
        k = weight_k(op, tensors)
        for run in op.runs:
            if run.bits not in SUPPORTED_BITS:
                _fail(where, f"{label}: weight run at channel {run.start} has {run.bits} bits; supported {SUPPORTED_BITS}")
            if run.start != position or run.count < 1 or run.offset != offset:
                _fail(where, f"{label}: weight runs must cover the output channels in order without gaps "
                             f"(run starting at {run.start}, expected {position}; offset {run.offset}, expected {offset})")
            position += run.count
            offset += run.count * row_bytes(k, run.bits)
        if position != out[2]:
            _fail(where, f"{label}: weight runs cover {position} channels, output {op.output} has {out[2]}")
    if isinstance(op, Add):
        a, b = (tensors[name].shape for name in op.inputs)
        if not a == b == out:
            _fail(where, f"{label}: add needs equal shapes, got {a}, {b} -> {out}")
        if not 0 <= op.left_shift <= 24:
            _fail(where, f"{label}: left_shift {op.left_shift} outside [0, 24]")
        _check_multipliers(where, label, (*op.input_multipliers, op.output_multiplier),
                           (*op.input_shifts, op.output_shift))
        _check_act(where, label, op.act_min, op.act_max)
    if isinstance(op, Concat):
        shapes = [tensors[name].shape for name in op.inputs]
        if len(op.requant) != len(op.inputs) or len(op.inputs) < 2:
            _fail(where, f"{label}: concat needs >= 2 inputs and one requant entry per input")
        if any(s[:2] != out[:2] for s in shapes) or sum(s[2] for s in shapes) != out[2]:
            _fail(where, f"{label}: concat inputs {shapes} do not make output {out}")
        for name, rq in zip(op.inputs, op.requant):
            if rq.copy and (tensors[name].scale, tensors[name].zero_point) != (
                    tensors[op.output].scale, tensors[op.output].zero_point):
                _fail(where, f"{label}: input {name} is marked copy but its scale/zero point differ from the output's")
            _check_multipliers(where, label, (rq.multiplier,), (rq.shift,))
    if isinstance(op, Reshape):
        if tensors[op.input].size != tensors[op.output].size:
            _fail(where, f"{label}: reshape changes the element count ({tensors[op.input].shape} -> {out})")
        if (tensors[op.input].scale, tensors[op.input].zero_point) != (
                tensors[op.output].scale, tensors[op.output].zero_point):
            _fail(where, f"{label}: reshape must keep scale and zero point")


def _check_multipliers(where: str, label: str, multipliers: Any, shifts: Any) -> None:
    for m, s in zip(multipliers, shifts):
        if not 0 <= int(m) <= ACCUMULATOR_LIMIT:
            _fail(where, f"{label}: multiplier {m} outside [0, 2^31 - 1]")
        if not -31 <= int(s) <= 30:
            _fail(where, f"{label}: shift {s} outside [-31, 30]")


def _validate_weighted_arrays(where: str, op: Conv2D | FullyConnected, model: QuantizedModel) -> None:
    label = f"layer {op.name}"
    _check_multipliers(where, label, model.arrays[f"{op.name}.multiplier"], model.arrays[f"{op.name}.shift"])
    bound = accumulator_bound(op, model.arrays, model.tensors)
    worst = int(np.argmax(bound))
    if bound[worst] > ACCUMULATOR_LIMIT:
        _fail(where, f"{label}: output channel {worst} can overflow the int32 accumulator "
                     f"(worst case {int(bound[worst])} > 2^31 - 1): lower the bias or the weights' magnitude")


def _validate_layout(where: str, model: QuantizedModel) -> None:
    from edgejpq.cost.memory import check_layout  # local: memory imports this module

    try:
        check_layout(model)
    except ValueError as exc:
        _fail(where, f"memory layout: {exc}")
