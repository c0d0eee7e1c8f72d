"""SE-ResNet, SE-ResNeXt and their plain twins: one ResNet implementation with SE as a block option.

The SE block follows Hu et al., "Squeeze-and-Excitation Networks": squeeze =
global pooling to a C-vector, excitation = FC(C -> C/r) -> ReLU -> FC(C/r -> C)
-> gate, scale = channel-wise multiply. The FCs are 1x1 convolutions (a Linear
weight reshaped), so the exported graph is a plain pool -> conv -> relu -> conv
-> sigmoid -> mul chain that TensorRT and INT8 tools handle well.

Module names follow timm's ``resnet.py`` (``conv1``, ``layer1.0.se.fc1``, ``fc``) so
state dicts of that layout load directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sedeploy.errors import ConfigError
from sedeploy.models.registry import ModelDefaults, register_model

SE_VARIANTS = ("standard", "pre", "post", "identity", "3x3")
"""Where the SE block sits in a residual unit. ``standard``: on the residual branch's output, before the
addition; ``pre``: on the unit's input; ``post``: after the addition (and its ReLU); ``identity``: on the
identity branch (the paper's integration ablation, Fig. 5 and Table 14). ``3x3``: after the bottleneck's
3x3 conv, on its narrower width (the paper's SE_3x3, Table 15; bottleneck blocks only)."""
SE_STAGES = (2, 3, 4, 5)
"""Stages that can hold SE blocks, numbered as the paper numbers them after ResNet's conv2_x..conv5_x
(``layer1``..``layer4`` here): ``se_stages=(2,)`` is the paper's SE_Stage_2 (Table 13)."""
SQUEEZE_OPS = ("avg", "max")
"""Squeeze operator (the paper's Table 11)."""
GATES = ("sigmoid", "tanh", "relu")
"""Excitation gate non-linearity (the paper's Table 12)."""
STRIDE_PLACEMENTS = ("v1", "v1.5")
"""Where a downsampling bottleneck strides: ``v1`` on its first 1x1 conv, ``v1.5`` on its 3x3 conv."""
STEMS = ("imagenet", "small", "legacy")
"""``imagenet``: 7x7/2 conv + 3x3/2 max-pool (padding 1); ``small``: one 3x3/1 conv, for inputs of
64 px or less; ``legacy``: the original SENet release's stem (the ``pretrainedmodels`` package, timm's
``legacy_*``), whose max-pool has no padding and rounds up (``ceil_mode``): same sizes at 224, other
values."""


def _check_choice(option: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {option} {value!r}; valid values: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class SEOptions:
    """How every SE block of a network is built and placed."""

    reduction: int = 16
    variant: str = "standard"
    squeeze: str = "avg"
    gate: str = "sigmoid"
    bias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ConfigError(f"reduction ratio must be a positive integer, got {self.reduction!r}")
        _check_choice("se_variant", self.variant, SE_VARIANTS)
        _check_choice("squeeze", self.squeeze, SQUEEZE_OPS)
        _check_choice("gate", self.gate, GATES)


SE_OPTION_NAMES = ("reduction", "se_variant", "squeeze", "gate", "se_bias")
"""Options every SE model takes; a plain twin takes none of them."""


def split_options(
    options: dict[str, Any], valid: Sequence[str], with_se: bool, se_names: Sequence[str] = SE_OPTION_NAMES
) -> tuple[dict[str, Any], SEOptions | None]:
    """Check option names, then split ``options`` into the network's own and the SE block's.

    ``se_names`` are the SE options this family accepts; for a plain model they are all refused.
    """
    allowed = tuple(valid) + (tuple(se_names) if with_se else ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        extra = " (SE options apply only to SE models)" if set(unknown) & set(se_names) else ""
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}{extra}; valid options: {', '.join(allowed)}"
        )
    own = {k: v for k, v in options.items() if k in valid}
    if not with_se:
        return own, None
    se = SEOptions(
        reduction=options.get("reduction", 16),
        variant=options.get("se_variant", "standard"),
        squeeze=options.get("squeeze", "avg"),
        gate=options.get("gate", "sigmoid"),
        bias=options.get("se_bias", True),
    )
    return own, se


class SqueezeExcite(nn.Module):
    """The SE block: ``x * gate(fc2(relu(fc1(squeeze(x)))))`` with a per-channel gate.

    Adds ``2 * C * (C // r)`` weights, plus ``C // r + C`` biases when ``bias`` is set.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        squeeze: str = "avg",
        gate: str = "sigmoid",
        bias: bool = True,
    ) -> None:
        super().__init__()
        reduced = channels // reduction
        if reduced < 1:
            raise ConfigError(
                f"reduction ratio {reduction} leaves no channels in an SE block of {channels} channels "
                f"(C/r < 1); use a reduction of at most {channels}"
            )
        self.channels = channels
        self.squeeze_op = _check_choice("squeeze", squeeze, SQUEEZE_OPS)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1, bias=bias)
        self.gate: nn.Module = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[
            _check_choice("gate", gate, GATES)
        ]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean((2, 3), keepdim=True) if self.squeeze_op == "avg" else x.amax((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(squeezed))))


class _ResidualBlock(nn.Module):
    """Shared forward of basic and bottleneck blocks: where SE sits is decided here, once."""

    expansion = 1
    downsample: nn.Module | None
    se: nn.Module | None
    se_variant: str
    act_out: nn.Module

    def _attach_se(
        self, se: SEOptions | None, in_channels: int, out_channels: int, mid_channels: int | None = None
    ) -> None:
        self.se_variant = se.variant if se is not None else "none"
        if se is None:
            self.se = None
            return
        channels = {"pre": in_channels, "3x3": mid_channels}.get(se.variant, out_channels)
        if channels is None:
            raise ConfigError(
                "se_variant '3x3' applies to bottleneck blocks only; use standard, pre, post or identity"
            )
        self.se = SqueezeExcite(channels, se.reduction, se.squeeze, se.gate, se.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.residual(self.se(x) if self.se is not None and self.se_variant == "pre" else x)
        if self.se is not None and self.se_variant == "standard":
            out = self.se(out)
        if self.se is not None and self.se_variant == "identity":
            shortcut = self.se(shortcut)
        out = self.act_out(out + shortcut)
        if self.se is not None and self.se_variant == "post":
            out = self.se(out)
        return out


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        se: SEOptions | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_on_1x1: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ConfigError("basic blocks support only groups=1 and base_width=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self._attach_se(se, inplanes, planes)
        self.act_out = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        se: SEOptions | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_on_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=stride if stride_on_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=1 if stride_on_1x1 else stride, padding=1, groups=groups, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self._attach_se(se, inplanes, out_planes, mid_channels=width)
        self.act_out = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        if self.se is not None and self.se_variant == "3x3":
            out = self.se(out)
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """A ResNet / ResNeXt, with SE blocks in every residual unit when ``se`` is given."""

    complexity_groups: ClassVar[dict[str, str]] = {
        "conv1": "stem",
        "bn1": "stem",
        "act1": "stem",
        "maxpool": "stem",
        "global_pool": "head",
        "fc": "head",
    }
    """Top-level module name -> the stage it belongs to in complexity breakdowns."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        base_width: int = 64,
        se: SEOptions | None = None,
        stride_placement: str = "v1",
        stem: str = "imagenet",
        se_stages: Sequence[int] = SE_STAGES,
    ) -> None:
        super().__init__()
        se_stages = tuple(se_stages)
        unknown_stages = sorted(set(se_stages) - set(SE_STAGES))
        if unknown_stages or not se_stages:
            raise ConfigError(
                f"se_stages {se_stages!r} is not a non-empty subset of {SE_STAGES} "
                "(the paper's conv2_x..conv5_x, i.e. layer1..layer4)"
            )
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError(f"in_chans must be an integer >= 1 (1 for grayscale), got {in_chans!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        _check_choice("stride_placement", stride_placement, STRIDE_PLACEMENTS)
        _check_choice("stem", stem, STEMS)
        self.num_classes = num_classes
        self.in_chans = in_chans
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "legacy":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        inplanes = 64
        stages = []
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            out_planes = planes * block.expansion
            blocks = []
            for block_index in range(depth):
                block_stride = stride if block_index == 0 else 1
                downsample = None
                if block_stride != 1 or inplanes != out_planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, out_planes, 1, stride=block_stride, bias=False),
                        nn.BatchNorm2d(out_planes),
                    )
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        stride=block_stride,
                        downsample=downsample,
                        se=se if index + 2 in se_stages else None,
                        groups=groups,
                        base_width=base_width,
                        stride_on_1x1=stride_placement == "v1",
                    )
                )
                inplanes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = inplanes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.global_pool(self.forward_features(x)), 1))


_RESNET_OPTIONS = ("num_classes", "in_chans", "stride_placement", "stem")


def _build_resnet(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    *,
    with_se: bool,
    default_stride: str,
    groups: int = 1,
    base_width: int = 64,
    **options: Any,
) -> ResNet:
    own, se = split_options(options, _RESNET_OPTIONS, with_se, (*SE_OPTION_NAMES, "se_stages"))
    own.setdefault("stride_placement", default_stride)
    if se is not None and "se_stages" in options:
        own["se_stages"] = options["se_stages"]
    return ResNet(block, layers, groups=groups, base_width=base_width, se=se, **own)


def _defaults(plain_twin: str | None = None) -> ModelDefaults:
    return ModelDefaults(plain_twin=plain_twin)


# The original SENet release (whose numbers the paper reports) strides on the first
# 1x1 conv in SE-ResNet (v1) and on the 3x3 conv in SE-ResNeXt, as ResNeXt does (v1.5).


@register_model(_defaults())
def resnet18(**options: Any) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2)."""
    return _build_resnet(BasicBlock, (2, 2, 2, 2), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet34(**options: Any) -> ResNet:
    """ResNet-34 (basic blocks 3-4-6-3)."""
    return _build_resnet(BasicBlock, (3, 4, 6, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet50(**options: Any) -> ResNet:
    """ResNet-50 (bottlenecks 3-4-6-3), stride on the 1x1 conv by default as in the paper."""
    return _build_resnet(Bottleneck, (3, 4, 6, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet101(**options: Any) -> ResNet:
    """ResNet-101 (bottlenecks 3-4-23-3)."""
    return _build_resnet(Bottleneck, (3, 4, 23, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet152(**options: Any) -> ResNet:
    """ResNet-152 (bottlenecks 3-8-36-3)."""
    return _build_resnet(Bottleneck, (3, 8, 36, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnext50_32x4d(**options: Any) -> ResNet:
    """ResNeXt-50 32x4d (grouped 3x3, stride on the 3x3 conv)."""
    return _build_resnet(
        Bottleneck, (3, 4, 6, 3), with_se=False, default_stride="v1.5", groups=32, base_width=4, **options
    )


@register_model(_defaults())
def resnext101_32x4d(**options: Any) -> ResNet:
    """ResNeXt-101 32x4d."""
    return _build_resnet(
        Bottleneck, (3, 4, 23, 3), with_se=False, default_stride="v1.5", groups=32, base_width=4, **options
    )


@register_model(_defaults(plain_twin="resnet18"))
def se_resnet18(**options: Any) -> ResNet:
    """SE-ResNet-18."""
    return _build_resnet(BasicBlock, (2, 2, 2, 2), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet34"))
def se_resnet34(**options: Any) -> ResNet:
    """SE-ResNet-34."""
    return _build_resnet(BasicBlock, (3, 4, 6, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet50"))
def se_resnet50(**options: Any) -> ResNet:
    """SE-ResNet-50 as in the paper (r=16, stride on the 1x1 conv)."""
    return _build_resnet(Bottleneck, (3, 4, 6, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet101"))
def se_resnet101(**options: Any) -> ResNet:
    """SE-ResNet-101."""
    return _build_resnet(Bottleneck, (3, 4, 23, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet152"))
def se_resnet152(**options: Any) -> ResNet:
    """SE-ResNet-152."""
    return _build_resnet(Bottleneck, (3, 8, 36, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnext50_32x4d"))
def se_resnext50_32x4d(**options: Any) -> ResNet:
    """SE-ResNeXt-50 32x4d."""
    return _build_resnet(
        Bottleneck, (3, 4, 6, 3), with_se=True, default_stride="v1.5", groups=32, base_width=4, **options
    )


@register_model(_defaults(plain_twin="resnext101_32x4d"))
def se_resnext101_32x4d(**options: Any) -> ResNet:
    """SE-ResNeXt-101 32x4d."""
    return _build_resnet(
        Bottleneck, (3, 4, 23, 3), with_se=True, default_stride="v1.5", groups=32, base_width=4, **options
    )
