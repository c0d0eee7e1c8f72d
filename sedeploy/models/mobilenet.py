"""MobileNet v1 and SE-MobileNet v1: the edge-sized members of the zoo.

MobileNet v1 (Howard et al., 2017): a 3x3/2 conv, then 13 depthwise-separable
units (3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU), global
pooling and a linear classifier. SE-MobileNet adds an SE block on each unit's
output, as the SENet paper does for its MobileNet row (569 vs 572 MMACs,
4.2M vs 4.7M parameters at width 1.0 and 224x224).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sedeploy.errors import ConfigError
from sedeploy.models.registry import ModelDefaults, register_model
from sedeploy.models.senet import SEOptions, SqueezeExcite, split_options

# (output channels, stride) of the 13 depthwise-separable units, grouped by output resolution.
_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, 1x1 pointwise conv-BN-ReLU, then SE on the output when asked."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se: SEOptions | None) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            *_conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels)
        )
        self.pointwise = nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1, 1))
        self.se = (
            SqueezeExcite(out_channels, se.reduction, se.squeeze, se.gate, se.bias)
            if se is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pointwise(self.depthwise(x))
        return self.se(out) if self.se is not None else out


class MobileNetV1(nn.Module):
    """MobileNet v1 with a width multiplier; stages ``layer1``..``layer5`` end at 112, 56, 28, 14 and 7 px (224 input)."""

    complexity_groups: ClassVar[dict[str, str]] = {"stem": "stem", "global_pool": "head", "fc": "head"}

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_multiplier: float = 1.0,
        se: SEOptions | None = None,
    ) -> None:
        super().__init__()
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError(f"in_chans must be an integer >= 1 (1 for grayscale), got {in_chans!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not isinstance(width_multiplier, (int, float)) or not 0 < width_multiplier <= 4:
            raise ConfigError(f"width_multiplier must be in (0, 4], got {width_multiplier!r}")

        def scaled(channels: int) -> int:
            return max(8, int(channels * width_multiplier))

        channels = scaled(32)
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, channels, 3, 2))
        for index, units in enumerate(_STAGES):
            blocks = []
            for out_channels, stride in units:
                blocks.append(DepthwiseSeparable(channels, scaled(out_channels), stride, se))
                channels = scaled(out_channels)
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index in range(len(_STAGES)):
            x = self.get_submodule(f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.global_pool(x), 1))


_MOBILENET_OPTIONS = ("num_classes", "in_chans", "width_multiplier")


@register_model(ModelDefaults())
def mobilenet_v1(**options: Any) -> MobileNetV1:
    """MobileNet v1, width 1.0 by default: 569 MMACs, 4.2M parameters at 224x224."""
    own, se = split_options(options, _MOBILENET_OPTIONS, with_se=False)
    return MobileNetV1(se=se, **own)


@register_model(ModelDefaults(plain_twin="mobilenet_v1"))
def se_mobilenet_v1(**options: Any) -> MobileNetV1:
    """SE-MobileNet v1: an SE block (r=16) after every depthwise-separable unit: 572 MMACs, 4.7M parameters."""
    own, se = split_options(options, _MOBILENET_OPTIONS, with_se=True)
    return MobileNetV1(se=se, **own)
