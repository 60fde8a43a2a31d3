"""torchvision ResNet-50 trunks shared by MedCLIP and GLoRIA (tiny: one block per stage)."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

FULL_LAYERS, TINY_LAYERS = [3, 4, 6, 3], [1, 1, 1, 1]


def resnet(tiny: bool, head: nn.Module) -> ResNet:
    """A ResNet-50 (or its one-block-per-stage tiny variant) with ``fc = head``.

    Both end in 2048 channels (Bottleneck expansion 4), so the heads are the same size.
    """
    model = ResNet(Bottleneck, TINY_LAYERS if tiny else FULL_LAYERS)
    model.fc = head
    return model
