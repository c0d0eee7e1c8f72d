"""Pre-activation (SE-)ResNets with configurable depths and widths, and the seed's grayscale chair classifier.

A pre-activation basic unit is BN-ReLU-conv3x3, BN-ReLU-conv3x3, SE, add; where the
shape changes, the shortcut is a 1x1 projection of the pre-activated input. The
network ends with BN-ReLU, global average pooling and a linear classifier. This
is the Keras SE-ResNet of the chair-classification seed (``create_se_resnet`` with
``resnet_block``), rebuilt so that its weights' shapes and its spatial sizes match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sedeploy.errors import ConfigError
from sedeploy.models.registry import ModelDefaults, register_model
from sedeploy.models.senet import SEOptions, SqueezeExcite, split_options


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice, then SE on the branch output, then the identity or projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se: SEOptions | None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.se = (
            SqueezeExcite(out_channels, se.reduction, se.squeeze, se.gate, se.bias)
            if se is not None
            else None
        )
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preactivated = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(preactivated)
        out = self.conv2(self.act2(self.bn2(self.conv1(preactivated))))
        if self.se is not None:
            out = self.se(out)
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv 7x7/2 + max-pool 3x3/2, stages of :class:`PreActBlock`, then BN-ReLU, pooling and a linear head."""

    complexity_groups: ClassVar[dict[str, str]] = {
        "conv1": "stem_conv",  # kept apart from the pool so reports show every spatial size
        "maxpool": "stem_pool",
        "norm": "head",
        "act": "head",
        "global_pool": "head",
        "fc": "head",
    }

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        width_multiplier: int = 1,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_width: int = 64,
        fc_bias: bool = True,
        se: SEOptions | None = None,
    ) -> None:
        super().__init__()
        depths, widths = tuple(depths), tuple(widths)
        if not depths or len(depths) != len(widths) or min(depths) < 1 or min(widths) < 1:
            raise ConfigError(
                f"depths {depths!r} and widths {widths!r} must be equally long lists of positive integers"
            )
        if (
            isinstance(width_multiplier, bool)
            or not isinstance(width_multiplier, int)
            or width_multiplier < 1
        ):
            raise ConfigError(f"width_multiplier must be an integer >= 1, got {width_multiplier!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError(f"in_chans must be an integer >= 1 (1 for grayscale), got {in_chans!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem_width
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            out_channels = width * width_multiplier
            blocks = [
                PreActBlock(
                    channels if i == 0 else out_channels, out_channels, 2 if index and not i else 1, se
                )
                for i in range(depth)
            ]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            channels = out_channels
        self.stages = len(depths)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes, bias=fc_bias)
        self.num_features = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for index in range(self.stages):
            x = self.get_submodule(f"layer{index + 1}")(x)
        x = self.global_pool(self.act(self.norm(x)))
        return self.fc(torch.flatten(x, 1))


_PREACT_OPTIONS = ("depths", "widths", "width_multiplier", "num_classes", "in_chans", "fc_bias")


def _build(with_se: bool, defaults: dict[str, Any], options: dict[str, Any]) -> PreActResNet:
    own, se = split_options({**defaults, **options}, _PREACT_OPTIONS, with_se)
    return PreActResNet(se=se, **own)


@register_model(ModelDefaults())
def preact_resnet(**options: Any) -> PreActResNet:
    """Pre-activation ResNet with basic units; ``depths``, ``widths`` and ``width_multiplier`` configure it."""
    return _build(False, {}, options)


@register_model(ModelDefaults(plain_twin="preact_resnet"))
def se_preact_resnet(**options: Any) -> PreActResNet:
    """Pre-activation SE-ResNet with basic units (SE on each unit's branch, before the addition)."""
    return _build(True, {}, options)


CHAIR_LABELS = ("bench", "chair", "office_chair", "sofa")
_CHAIR_DEFAULTS = ModelDefaults(
    input_size=(1, 473, 473),
    num_classes=4,
    mean=(0.0,),
    std=(1.0,),  # the seed scales pixels to [0, 1] and does nothing more
    crop_pct=1.0,  # the seed resizes whole photos to 473x473, no crop
    labels=CHAIR_LABELS,
)
_CHAIR = {"depths": (2, 1, 1, 2), "in_chans": 1, "num_classes": 4, "fc_bias": False}


@register_model(_CHAIR_DEFAULTS)
def chair_resnet(**options: Any) -> PreActResNet:
    """The chair classifier's network without SE: the plain twin of :func:`chair_se_resnet`."""
    return _build(False, _CHAIR, options)


@register_model(ModelDefaults(**{**vars(_CHAIR_DEFAULTS), "plain_twin": "chair_resnet"}))
def chair_se_resnet(**options: Any) -> PreActResNet:
    """The seed's grayscale 4-class chair classifier (bench, chair, office chair, sofa) at 473x473.

    Stage depths (2, 1, 1, 2) follow the seed's builder loop as written; r=16 and
    bias-free SE and classifier, as its Keras layers are. 9,771,200 parameters
    plus 6,272 BatchNorm running statistics (Keras: 9,777,472 in all).
    """
    return _build(True, {**_CHAIR, "se_bias": False}, options)
