"""VGG19 with batch norm: the convolutional ``features`` stack, with torchvision's module indices.

RoMa's fine encoder is ``torchvision.models.vgg19_bn().features[:40]`` held in a ``ModuleList``
called ``layers``; keeping torchvision's indices (``layers.0`` conv, ``layers.1`` BN, ``layers.2``
ReLU, ``layers.6`` max-pool, ...) is what lets the official checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

# torchvision's configuration "E" (VGG19): channel counts, "M" = 2x2 max-pool.
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19_bn_features(in_channels: int = 3) -> list[nn.Module]:
    """The 53 modules of torchvision's ``vgg19_bn().features`` in their order (conv, BN, ReLU / pool)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
    return layers


class VGG19BN(nn.Module):
    """The first ``num_layers`` modules of VGG19-BN ``features`` returning a feature pyramid.

    ``forward(x)`` with x (B,3,H,W) returns ``{1: (B,64,H,W), 2: (B,128,H/2,W/2),
    4: (B,256,H/4,W/4), 8: (B,512,H/8,W/8)}`` for the default 40 layers: the activation just
    before each max-pool, keyed by its stride (RoMa's fine features). The trailing pool, whose
    output nobody reads, is kept as a module (it has no parameters) but not run.
    """

    def __init__(self, num_layers: int = 40) -> None:
        super().__init__()
        self.layers = nn.ModuleList(vgg19_bn_features()[:num_layers])

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        features: dict[int, torch.Tensor] = {}
        stride = 1
        last_pool = max(i for i, layer in enumerate(self.layers) if isinstance(layer, nn.MaxPool2d))
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.MaxPool2d):
                features[stride] = x
                stride *= 2
                if i == last_pool:
                    break
            x = layer(x)
        return features
