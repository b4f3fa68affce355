"""Small PyTorch models covering every supported layer, for export tests."""

from __future__ import annotations

import torch
from torch import nn


class DepthwiseNet(nn.Module):
    """conv → depthwise (ReLU6) → pointwise → max pool → avg pool (padding) → GAP → linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 12, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.dw_bn = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 20, 1)
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.relu6(self.dw_bn(self.dw(x)))
        x = torch.relu(self.pw(x))
        x = self.avgpool(self.maxpool(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, a residual add, flatten of a spatial map into Linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.a = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.b = nn.Conv2d(in_channels, 5, 5, stride=1, padding=2)
        self.c = nn.Conv2d(11, 11, 1)
        self.d = nn.Conv2d(11, 11, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(11 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        z = torch.relu(self.c(y))
        z = torch.relu(self.d(z) + y)
        z = self.pool(z)
        return self.fc(z.view(z.size(0), -1))


class Conv1dNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(in_channels, 8, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 16, 3, padding=1)
        self.pool = nn.AvgPool1d(2)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.c1(x)))
        x = self.pool(torch.relu(self.c2(x)))
        return self.fc(self.gap(x).flatten(1))


class Unsupported(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial statistics so folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
