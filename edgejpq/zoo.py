"""Build float models from a spec: a built-in zoo name or a class in a user's Python file.

All zoo models are plain nn.Module graphs that torch.fx.symbolic_trace can trace: no
data-dependent control flow, ReLU/ReLU6 as separate (non-inplace) modules, residual adds as `+`,
and only layers edgejpq.graph lowers (conv incl. depthwise, BN right after it, pooling, linear).
Serialized models (torch.export `.pt2`, TorchScript `.ts`/`.pt`) are read and checked against
the data, then refused with the construct edgejpq cannot lower yet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgejpq.errors import EdgejpqError


def _conv_bn_act(in_ch: int, out_ch: int, *, stride: int = 1, act: type[nn.Module] = nn.ReLU) -> list[nn.Module]:
    """conv3x3 (padding 1) + BN + activation."""
    # bias=False: the following BatchNorm supplies the bias (and folds into the conv later).
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        act(),
    ]


class SmallCNN(nn.Module):
    """Three conv3x3-BN-ReLU layers (16, 32/2, 64/2), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_act(in_channels, 16),
            *_conv_bn_act(16, 32, stride=2),
            *_conv_bn_act(32, 64, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (identity, or 1x1 conv-BN when downsampling), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # The choice of shortcut is fixed at construction, so forward() stays branch-free for fx.
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out = out + self.shortcut(x)
        return self.relu2(out)


class ResNet8(nn.Module):
    """MLPerf Tiny ResNet-8 (image classification) with a configurable number of input channels."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_act(in_channels, 16))
        self.stack1 = ResidualBlock(16, 16, 1)
        self.stack2 = ResidualBlock(16, 32, 2)
        self.stack3 = ResidualBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.classifier(self.flatten(self.pool(x)))


class MLP(nn.Module):
    """Flatten, Linear(64), ReLU, Linear(classes): works for any input shape."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), 64)
        self.relu = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (stride 1 or 2) + BN + act, then pointwise 1x1 + BN + act (MobileNetV1 / DS-CNN block)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, kernel_size=3, stride=stride, padding=1, groups=in_ch, bias=False)
        self.dw_bn = nn.BatchNorm2d(in_ch)
        self.dw_act = act()
        self.pw = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_ch)
        self.pw_act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


class DSCNN(nn.Module):
    """DS-CNN (Hello Edge / MLPerf Tiny keyword spotting) for images.

    The KWS model starts with a 10x4 stride-2 conv over a 49x10 spectrogram; for images the first
    conv is 3x3 stride 2. Then 4 depthwise-separable blocks of 64 channels, global average pool, linear.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_act(in_channels, width, stride=2))
        self.blocks = nn.Sequential(*(DepthwiseSeparable(width, width, 1, nn.ReLU) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.blocks(self.stem(x)))))


# MobileNetV1 at width 1.0: the stem's channels and stride, then (channels, stride) of its 13
# depthwise-separable blocks. Five stride-2 stages in all: 224x224 ImageNet inputs end at 7x7.
_MOBILENET_V1_STEM = (32, 2)
_MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                        (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _stride2_stages_for(size: int, limit: int) -> int:
    """How many 3x3/pad-1/stride-2 stages (each ceil(n/2)) keep a side of `size` at 2 or more."""
    stages = 0
    while stages < limit and (size + 1) // 2 >= 2:
        size = (size + 1) // 2
        stages += 1
    return stages


class MobileNetV1(nn.Module):
    """MobileNetV1 (width multiplier 0.25 by default: 8, 16, 32, 32, 64, 64, 128 x6, 256, 256 channels).

    Depthwise-separable blocks with BN + ReLU6, global average pool, linear. Small inputs keep only
    as many stride-2 stages as leave the final map at least 2x2; the earliest ones (the stem first)
    run at stride 1 instead, so a 28x28 input keeps 4 of the 5 and ends at 2x2.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width_multiplier: float = 0.25) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        channels = [max(1, int(c * width_multiplier)) for c, _ in (_MOBILENET_V1_STEM, *_MOBILENET_V1_BLOCKS)]
        strides = [s for _, s in (_MOBILENET_V1_STEM, *_MOBILENET_V1_BLOCKS)]
        stride2_positions = [i for i, s in enumerate(strides) if s == 2]
        keep = _stride2_stages_for(min(height, width), len(stride2_positions))
        for i in stride2_positions[: len(stride2_positions) - keep]:
            strides[i] = 1
        self.stem = nn.Sequential(*_conv_bn_act(in_channels, channels[0], stride=strides[0], act=nn.ReLU6))
        self.blocks = nn.Sequential(*(
            DepthwiseSeparable(channels[i - 1], channels[i], strides[i], nn.ReLU6) for i in range(1, len(channels))
        ))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.blocks(self.stem(x)))))


class CNN1D(nn.Module):
    """1-D CNN for (C, L) signals such as MNIST-1D: conv 32 k5, conv 32 k3/2, conv 64 k3/2 (BN + ReLU), GAP, linear."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 32, kernel_size=5, padding=2, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 32, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 64, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


_IMAGE_MODELS = "zoo:cnn, zoo:resnet8, zoo:dscnn or zoo:mobilenet"


def _require_image_input(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise EdgejpqError(
            f"model zoo:{name} needs a 2-D input of shape (C, H, W), got input shape {tuple(input_shape)}; "
            "use zoo:cnn1d, zoo:mlp or your own model for 1-D signals"
        )
    return int(input_shape[0])


def _require_signal_input(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 2:
        raise EdgejpqError(
            f"model zoo:{name} needs a 1-D input of shape (C, L), got input shape {tuple(input_shape)}; "
            f"use {_IMAGE_MODELS} (or zoo:mlp) for images"
        )
    return int(input_shape[0])


# zoo name -> builder(input_shape, num_classes); the order is the one error messages list.
_ZOO: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "cnn": lambda shape, k: SmallCNN(_require_image_input("cnn", shape), k),
    "resnet8": lambda shape, k: ResNet8(_require_image_input("resnet8", shape), k),
    "mlp": lambda shape, k: MLP(shape, k),
    "dscnn": lambda shape, k: DSCNN(_require_image_input("dscnn", shape), k),
    "mobilenet": lambda shape, k: MobileNetV1((_require_image_input("mobilenet", shape), *shape[1:]), k),
    "cnn1d": lambda shape, k: CNN1D(_require_signal_input("cnn1d", shape), k),
}
ZOO_NAMES: tuple[str, ...] = tuple(_ZOO)


def _build_from_file(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    file_part, _, class_name = spec.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise EdgejpqError(f"model file {path} (from model spec {spec!r}) does not exist")
    # A name unique to the resolved path: two different model.py files must not collide.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"edgejpq_user_model_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise EdgejpqError(f"model file {path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before exec so dataclasses / pickling inside the user's file can find it.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise EdgejpqError(f"model file {path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None or not isinstance(cls, type):
        raise EdgejpqError(f"model file {path} has no class {class_name!r} (from model spec {spec!r})")
    if not issubclass(cls, nn.Module):
        raise EdgejpqError(f"{path}:{class_name} is not a torch.nn.Module subclass")

    offered = {"input_shape": tuple(input_shape), "num_classes": num_classes, "in_channels": int(input_shape[0])}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    # Only explicitly named parameters: a **kwargs catch-all may forward them somewhere that rejects them.
    kwargs = {
        name: value
        for name, value in offered.items()
        if name in params
        and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    try:
        model = cls(**kwargs)
    except Exception as exc:
        raise EdgejpqError(
            f"{path}:{class_name}({', '.join(kwargs)}) failed: {type(exc).__name__}: {exc}; its __init__ may only "
            "require input_shape, num_classes and in_channels"
        ) from exc
    return model


# --------------------------------------------------------------------------- serialized models

SERIALIZED_SUFFIXES = (".pt2", ".ts", ".pt")
_PROVIDE_SOURCE = ("provide the model as path/to/file.py:ClassName instead: the Python source of an nn.Module "
                   "built from nn.Conv1d/Conv2d/Linear/BatchNorm/ReLU/ReLU6/pooling modules whose __init__ takes "
                   "any of input_shape, num_classes, in_channels")


def _check_sample_shape(path: Path, what: str, shape: tuple, input_shape: tuple[int, ...]) -> None:
    """`shape` is the model's (batch, ...) input shape; symbolic (dynamic) sizes match anything."""
    sample = tuple(shape[1:])
    if len(sample) != len(input_shape) or any(isinstance(d, int) and d != e for d, e in zip(sample, input_shape)):
        raise EdgejpqError(
            f"{path}: the {what} takes inputs of shape {tuple(shape)}, but the data has samples of shape "
            f"{input_shape} (expected (batch, {', '.join(str(d) for d in input_shape)})); save the model for "
            "this data's sample shape or pick the matching data"
        )


def _check_num_classes(path: Path, what: str, shape: tuple, num_classes: int) -> None:
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != num_classes):
        raise EdgejpqError(f"{path}: the {what} returns shape {tuple(shape)}, but the data has {num_classes} classes "
                           f"(expected (batch, {num_classes}))")


def _refuse_exported_program(path: Path, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise EdgejpqError(f"{path}: cannot read as a torch.export program ({type(exc).__name__}: {exc}); "
                           "save it with torch.export.save(torch.export.export(model, (example,)), path)") from exc
    signature = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    tensor_inputs = [name for name in signature.user_inputs if isinstance(name, str) and name in placeholders]
    if len(tensor_inputs) != 1:
        raise EdgejpqError(f"{path}: the exported program takes {len(tensor_inputs)} tensor inputs; "
                           "edgejpq models take exactly one")
    value = placeholders[tensor_inputs[0]].meta.get("val")
    if value is not None:
        _check_sample_shape(path, "exported program", tuple(value.shape), input_shape)
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = output_node.args[0] if isinstance(output_node.args[0], (tuple, list)) else (output_node.args[0],)
    user_outputs = outputs[-len(signature.user_outputs):] if signature.user_outputs else ()
    if len(user_outputs) != 1:
        raise EdgejpqError(f"{path}: the exported program returns {len(user_outputs)} outputs; "
                           "edgejpq models return exactly one tensor of class scores")
    out_value = getattr(user_outputs[0], "meta", {}).get("val")
    if out_value is not None:
        _check_num_classes(path, "exported program", tuple(out_value.shape), num_classes)
    ops = Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")
    op_list = ", ".join(f"{op} x{count}" if count > 1 else op for op, count in ops.most_common(6))
    if len(ops) > 6:
        op_list += f", ... ({len(ops)} kinds)"
    parameters = list(signature.inputs_to_parameters.values())
    example = f" (e.g. {parameters[0]!r})" if parameters else ""
    # Verified with torch 2.13: ExportedProgram.module() forbids .eval()/.train(), which tracing and
    # training need, and its graph is not module-level: weights arrive as graph inputs / get_attr
    # nodes and layers are ATen calls, none of which edgejpq.graph lowers.
    raise EdgejpqError(
        f"{path}: torch.export programs are not supported yet (the file itself is fine: one input "
        f"{tuple(value.shape) if value is not None else '?'}, {num_classes} class outputs). edgejpq lowers module-level "
        f"torch.fx graphs (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, ...), but this program's graph calls ATen operators "
        f"({op_list or 'none'}) on weights that are graph inputs{example}, and exported modules cannot be switched "
        f"to train/eval mode; {_PROVIDE_SOURCE}"
    )


def _refuse_torchscript(path: Path, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation notices: the refusal below says it all
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        hint = (" If it is a float checkpoint from `edgejpq train`, pass it to `edgejpq export --model`; it is not "
                "a model spec." if path.suffix == ".pt" else "")
        raise EdgejpqError(f"{path}: cannot read as a TorchScript archive ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); save it with torch.jit.save.{hint}") from exc
    scripted.eval()
    try:
        with torch.no_grad():
            out = scripted(torch.zeros(1, *input_shape))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgejpqError(f"{path}: the TorchScript model does not accept inputs of shape (1, "
                           f"{', '.join(str(d) for d in input_shape)}) ({type(exc).__name__}: {first_line}); "
                           "use data with the sample shape it was built for") from None
    if not isinstance(out, torch.Tensor):
        raise EdgejpqError(f"{path}: the TorchScript model returns {type(out).__name__}, "
                           "edgejpq models return one tensor of class scores")
    _check_num_classes(path, "TorchScript model", tuple(out.shape), num_classes)
    raise EdgejpqError(
        f"{path}: TorchScript models are not supported (the file itself is fine: it maps (1, "
        f"{', '.join(str(d) for d in input_shape)}) to {tuple(out.shape)}). edgejpq reads a model by tracing its "
        "Python forward() with torch.fx, and a ScriptModule's forward() is compiled TorchScript that torch.fx "
        f"cannot trace; {_PROVIDE_SOURCE}"
    )


# --------------------------------------------------------------------------- entry point


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Build `zoo:NAME` or `path/to/file.py:ClassName` for this input shape and class count.

    With `seed`, the initial weights are drawn from `torch.manual_seed(seed)` (torch's global generator
    is left as it was), so one seed builds one model; without it, from the global generator, which
    torch seeds at random in every process.

    `path/to/model.pt2` (torch.export) and `.ts`/`.pt` (TorchScript) files are read and checked
    against the input shape and class count, then refused: edgejpq cannot lower them yet.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(spec, input_shape, num_classes)
    input_shape = tuple(int(d) for d in input_shape)
    if num_classes < 1:
        raise EdgejpqError(f"num_classes must be at least 1, got {num_classes}")
    if spec.startswith("zoo:"):
        builder = _ZOO.get(spec[len("zoo:"):])
        if builder is None:
            raise EdgejpqError(f"unknown zoo model {spec!r}; zoo models: {', '.join('zoo:' + n for n in ZOO_NAMES)}")
        return builder(input_shape, num_classes)
    if spec.endswith(SERIALIZED_SUFFIXES):
        path = Path(spec)
        if not path.is_file():
            raise EdgejpqError(f"model file {path} (from model spec {spec!r}) does not exist")
        if path.suffix == ".pt2":
            return _refuse_exported_program(path, input_shape, num_classes)
        return _refuse_torchscript(path, input_shape, num_classes)
    file_part, sep, class_name = spec.rpartition(":")
    if sep and file_part.endswith(".py") and class_name:
        return _build_from_file(spec, input_shape, num_classes)
    raise EdgejpqError(
        f"unknown model spec {spec!r}; use one of {', '.join('zoo:' + n for n in ZOO_NAMES)} "
        "or path/to/file.py:ClassName"
    )
