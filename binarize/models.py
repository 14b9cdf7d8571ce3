"""Small reference networks for the bundled data and the demo (torchvision has none for 28-32 px images).

``resnet_small`` is the CIFAR-style ResNet of He et al. (2016, section 4.2): a 3x3 stem, three stages
of basic blocks at widths 16-32-64 (the "kernel stage" of the CBCN and RBCN CIFAR tables), global
average pooling and one Linear. Usable from the CLI as ``binarize.models:resnet_small``.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock


def resnet_small(num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (2, 2, 2)) -> nn.Module:
    """A ResNet for small images: ``blocks=(3, 3, 3)`` is ResNet-20, the default ``(2, 2, 2)`` ResNet-14.

    Stages after the first halve the resolution with a strided conv and a 1x1 conv + BN shortcut
    (torchvision's ``BasicBlock``, so ``binarize.convert`` keeps those shortcuts float by default).
    """
    if len(widths) != len(blocks):
        raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} must have the same length")
    layers = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
              nn.ReLU(inplace=True)]
    channels = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            downsample = None
            if stride != 1 or channels != width:
                downsample = nn.Sequential(nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width))
            layers.append(BasicBlock(channels, width, stride, downsample))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
