"""Build float models from a spec: a built-in zoo name or a class in a user's Python file.

All zoo models are plain nn.Module graphs that torch.fx.symbolic_trace can trace: no
data-dependent control flow, ReLU as separate (non-inplace) modules, residual adds as `+`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import torch
from torch import nn

from edgejpq.errors import EdgejpqError

ZOO_NAMES: tuple[str, ...] = ("cnn", "resnet8", "mlp")


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    # bias=False: the following BatchNorm supplies the bias (and folds into the conv later).
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=False),
    ]


class SmallCNN(nn.Module):
    """Three conv3x3-BN-ReLU layers (16, 32/2, 64/2), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 16, 1),
            *_conv_bn_relu(16, 32, 2),
            *_conv_bn_relu(32, 64, 2),
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
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 16, 1))
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


def _require_image_input(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise EdgejpqError(
            f"model zoo:{name} needs a 2-D input of shape (C, H, W), got input shape {tuple(input_shape)}; "
            "use zoo:mlp or your own model for 1-D signals"
        )
    return int(input_shape[0])


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


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build `zoo:cnn`, `zoo:resnet8`, `zoo:mlp` or `path/to/file.py:ClassName` for this input and class count."""
    input_shape = tuple(int(d) for d in input_shape)
    if num_classes < 1:
        raise EdgejpqError(f"num_classes must be at least 1, got {num_classes}")
    if spec.startswith("zoo:"):
        name = spec[len("zoo:"):]
        if name == "cnn":
            return SmallCNN(_require_image_input(name, input_shape), num_classes)
        if name == "resnet8":
            return ResNet8(_require_image_input(name, input_shape), num_classes)
        if name == "mlp":
            return MLP(input_shape, num_classes)
        raise EdgejpqError(f"unknown zoo model {spec!r}; zoo models: {', '.join('zoo:' + n for n in ZOO_NAMES)}")
    file_part, sep, class_name = spec.rpartition(":")
    if sep and file_part.endswith(".py") and class_name:
        return _build_from_file(spec, input_shape, num_classes)
    raise EdgejpqError(
        f"unknown model spec {spec!r}; use one of {', '.join('zoo:' + n for n in ZOO_NAMES)} "
        "or path/to/file.py:ClassName"
    )
