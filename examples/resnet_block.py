"""A small ResNet-style network for `python -m jacbench run --model` and `jacbench.compare`.

A stem (conv, batch norm, in-place ReLU), one basic residual block (two conv-BN pairs with an
identity shortcut), global average pooling and a linear head. Batch norm carries non-trivial
running statistics, as a trained network's would, and the suite runs it in eval mode with
those statistics as given. Any image size works (the pooling is adaptive).

    python -m jacbench run --model examples.resnet_block:make_net --input-shape 3,16,16 \\
        --batch 4,16 --outputs 10
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)  # the shortcut: not a Sequential, so no layer-list rules


class ResNetBlockNet(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.block = BasicBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def make_net(channels: int = 8, classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The network in eval mode, its batch norm statistics from a few training-mode passes
    over random images (what a trained model brings along)."""
    model = ResNetBlockNet(in_channels, channels, classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, in_channels, 8, 8) * 2 + 0.5)
    return model.eval()


def make_tiny() -> nn.Module:
    """The test size: 4 channels, 3 classes."""
    return make_net(channels=4, classes=3)
