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
STEMS = ("imagenet", "small", "legacy", "deep", "tiered", "legacy_deep")
"""``imagenet``: 7x7/2 conv + 3x3/2 max-pool (padding 1); ``small``: one 3x3/1 conv, for inputs of
64 px or less; ``legacy``: the original SENet release's stem (the ``pretrainedmodels`` package, timm's
``legacy_*``), whose max-pool has no padding and rounds up (``ceil_mode``): same sizes at 224, other
values. ``deep``: three 3x3 convs (``stem_width``, ``stem_width``, ``2 * stem_width`` wide; the first
strided) + the padded max-pool, timm's "c"/"d" stem; ``tiered``: the same with a narrower first conv
(``3 * (stem_width // 4)``), timm's "t" stem; ``legacy_deep``: the deep stem with the legacy max-pool,
SENet-154's as the original release built it."""
DOWNSAMPLES = ("conv", "conv3x3", "avg")
"""Projection shortcut of a block that changes shape: ``conv`` a strided 1x1 conv; ``conv3x3`` a strided
3x3 conv (1x1 where the stride is 1; SENet-154); ``avg`` a 2x2 average pool then a 1x1 conv (ResNet-D,
timm's ``avg_down``), which no longer drops three quarters of the input."""
BLOCK_STYLES = ("timm", "legacy")
"""Basic-block computation: ``timm`` applies SE to the second BatchNorm's output; ``legacy`` (the original
SENet release's SEResNetBlock, timm's ``legacy_seresnet18/34``) applies a ReLU first. Bottlenecks compute
the same in both."""


def round_to_divisor(value: float, divisor: int) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (halves up), at least ``divisor``.

    This is how timm sizes SE blocks (``make_divisible`` with ``round_limit=0``): 64 channels at r=16
    give 8, not 4.
    """
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


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
    divisor: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ConfigError(f"reduction ratio must be a positive integer, got {self.reduction!r}")
        if isinstance(self.divisor, bool) or not isinstance(self.divisor, int) or self.divisor < 1:
            raise ConfigError(
                f"se_divisor must be a positive integer (1: C // r; 8: timm's rounding), got {self.divisor!r}"
            )
        _check_choice("se_variant", self.variant, SE_VARIANTS)
        _check_choice("squeeze", self.squeeze, SQUEEZE_OPS)
        _check_choice("gate", self.gate, GATES)


SE_OPTION_NAMES = ("reduction", "se_variant", "squeeze", "gate", "se_bias")
"""Options every SE model takes; a plain twin takes none of them."""
RESNET_SE_OPTION_NAMES = (*SE_OPTION_NAMES, "se_stages", "se_divisor")
"""The SE options of the ResNet family, which a plain ResNet twin does not take."""


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
        divisor=options.get("se_divisor", 1),
    )
    return own, se


class SqueezeExcite(nn.Module):
    """The SE block: ``x * gate(fc2(relu(fc1(squeeze(x)))))`` with a per-channel gate.

    Adds ``2 * C * C'`` weights, plus ``C' + C`` biases when ``bias`` is set, where the reduced width
    ``C'`` is ``C // r`` (``divisor=1``, the paper's and the original release's) or ``C / r`` rounded
    to a multiple of ``divisor`` (timm's ``seresnet*`` use 8).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        squeeze: str = "avg",
        gate: str = "sigmoid",
        bias: bool = True,
        divisor: int = 1,
    ) -> None:
        super().__init__()
        reduced = channels // reduction if divisor == 1 else round_to_divisor(channels / reduction, divisor)
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
        self.se = SqueezeExcite(channels, se.reduction, se.squeeze, se.gate, se.bias, se.divisor)

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
        reduce_first: int = 1,
        block_style: str = "timm",
        aa: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ConfigError("basic blocks support only groups=1 and base_width=64")
        first = planes // reduce_first
        use_aa = aa and stride > 1
        self.conv1 = nn.Conv2d(inplanes, first, 3, stride=1 if use_aa else stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(first)
        self.act1 = nn.ReLU(inplace=True)
        self.aa: nn.Module = nn.AvgPool2d(2) if use_aa else nn.Identity()
        self.conv2 = nn.Conv2d(first, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # The original release's basic block activates the residual before SE; timm's does not.
        self.act_before_se: nn.Module = (
            nn.ReLU(inplace=True)
            if _check_choice("block_style", block_style, BLOCK_STYLES) == "legacy"
            else nn.Identity()
        )
        self._attach_se(se, inplanes, planes)
        self.act_out = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.aa(self.act1(self.bn1(self.conv1(x))))
        return self.act_before_se(self.bn2(self.conv2(out)))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4.

    ``reduce_first`` narrows the first 1x1 conv's output (SENet-154: 2); ``aa`` replaces the strided 3x3
    conv by a stride-1 conv followed by a 2x2 average pool (timm's ``aa_layer=nn.AvgPool2d``).
    """

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
        reduce_first: int = 1,
        block_style: str = "timm",
        aa: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("block_style", block_style, BLOCK_STYLES)
        width = int(planes * (base_width / 64.0)) * groups
        first = width // reduce_first
        out_planes = planes * self.expansion
        use_aa = aa and stride > 1 and not stride_on_1x1
        conv2_stride = 1 if stride_on_1x1 or use_aa else stride
        self.conv1 = nn.Conv2d(inplanes, first, 1, stride=stride if stride_on_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(first)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(first, width, 3, stride=conv2_stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.aa: nn.Module = nn.AvgPool2d(2) if use_aa else nn.Identity()
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self._attach_se(se, inplanes, out_planes, mid_channels=width)
        self.act_out = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.aa(self.act2(self.bn2(self.conv2(out))))
        if self.se is not None and self.se_variant == "3x3":
            out = self.se(out)
        return self.bn3(self.conv3(out))


def _stem(stem: str, in_chans: int, stem_width: int, aa: bool) -> tuple[nn.Module, nn.Module, int]:
    """The stem's convolution(s) (named ``conv1`` as in timm), its pool, and its output width."""
    if stem in ("deep", "tiered", "legacy_deep"):
        first = 3 * (stem_width // 4) if stem == "tiered" else stem_width
        out = 2 * stem_width
        conv: nn.Module = nn.Sequential(
            nn.Conv2d(in_chans, first, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
            nn.Conv2d(first, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, out, 3, padding=1, bias=False),
        )
    elif stem == "small":
        return nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False), nn.Identity(), 64
    else:
        out = 64
        conv = nn.Conv2d(in_chans, out, 7, stride=2, padding=3, bias=False)
    if aa:
        pool: nn.Module = nn.AvgPool2d(2)  # timm's avg-pool anti-aliasing replaces the stem max-pool outright
    elif stem in ("legacy", "legacy_deep"):
        pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    else:
        pool = nn.MaxPool2d(3, stride=2, padding=1)
    return conv, pool, out


def _projection(kind: str, inplanes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The shortcut projection of a block that changes shape (see :data:`DOWNSAMPLES`)."""
    if kind == "avg":
        pool: nn.Module = (
            nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        )
        return nn.Sequential(pool, nn.Conv2d(inplanes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))
    kernel = 3 if kind == "conv3x3" and stride > 1 else 1
    return nn.Sequential(
        nn.Conv2d(inplanes, out_planes, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def _positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be an integer >= 1, got {value!r}")
    return value


class ResNet(nn.Module):
    """A ResNet / ResNeXt / SENet, with SE blocks in every residual unit when ``se`` is given.

    The stem, shortcut and block options cover timm's ``resnet.py`` family (deep and tiered stems,
    average-pool shortcuts, SENet-154's narrowed first conv and 3x3 shortcuts, avg-pool
    anti-aliasing) and the original SENet release (legacy stems and basic block).
    """

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
        stem_width: int = 64,
        downsample: str = "conv",
        reduce_first: int = 1,
        block_style: str = "timm",
        aa: bool = False,
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
        _check_choice("downsample", downsample, DOWNSAMPLES)
        _check_choice("block_style", block_style, BLOCK_STYLES)
        _positive_int("reduce_first", reduce_first)
        if _positive_int("stem_width", stem_width) < 4:
            raise ConfigError(f"stem_width must be at least 4, got {stem_width}")
        if not isinstance(aa, bool):
            raise ConfigError(f"aa must be true or false, got {aa!r}")
        if aa and stride_placement == "v1" and block is Bottleneck:
            raise ConfigError(
                "aa (avg-pool anti-aliasing) needs stride_placement='v1.5' in bottleneck models"
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1, self.maxpool, inplanes = _stem(stem, in_chans, stem_width, aa)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        stages = []
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            out_planes = planes * block.expansion
            blocks = []
            for block_index in range(depth):
                block_stride = stride if block_index == 0 else 1
                projection = None
                if block_stride != 1 or inplanes != out_planes:
                    projection = _projection(downsample, inplanes, out_planes, block_stride)
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        stride=block_stride,
                        downsample=projection,
                        se=se if index + 2 in se_stages else None,
                        groups=groups,
                        base_width=base_width,
                        stride_on_1x1=stride_placement == "v1",
                        reduce_first=reduce_first,
                        block_style=block_style,
                        aa=aa,
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


_RESNET_OPTIONS = (
    "num_classes",
    "in_chans",
    "stride_placement",
    "stem",
    "stem_width",
    "downsample",
    "reduce_first",
    "block_style",
    "aa",
)


def build_resnet(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    *,
    with_se: bool,
    default_stride: str,
    groups: int = 1,
    base_width: int = 64,
    **options: Any,
) -> ResNet:
    """A ResNet family member from its block, depths and grouping, with user ``options`` checked and applied."""
    own, se = split_options(options, _RESNET_OPTIONS, with_se, RESNET_SE_OPTION_NAMES)
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
    return build_resnet(BasicBlock, (2, 2, 2, 2), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet34(**options: Any) -> ResNet:
    """ResNet-34 (basic blocks 3-4-6-3)."""
    return build_resnet(BasicBlock, (3, 4, 6, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet50(**options: Any) -> ResNet:
    """ResNet-50 (bottlenecks 3-4-6-3), stride on the 1x1 conv by default as in the paper."""
    return build_resnet(Bottleneck, (3, 4, 6, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet101(**options: Any) -> ResNet:
    """ResNet-101 (bottlenecks 3-4-23-3)."""
    return build_resnet(Bottleneck, (3, 4, 23, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnet152(**options: Any) -> ResNet:
    """ResNet-152 (bottlenecks 3-8-36-3)."""
    return build_resnet(Bottleneck, (3, 8, 36, 3), with_se=False, default_stride="v1", **options)


@register_model(_defaults())
def resnext50_32x4d(**options: Any) -> ResNet:
    """ResNeXt-50 32x4d (grouped 3x3, stride on the 3x3 conv)."""
    return build_resnet(
        Bottleneck, (3, 4, 6, 3), with_se=False, default_stride="v1.5", groups=32, base_width=4, **options
    )


@register_model(_defaults())
def resnext101_32x4d(**options: Any) -> ResNet:
    """ResNeXt-101 32x4d."""
    return build_resnet(
        Bottleneck, (3, 4, 23, 3), with_se=False, default_stride="v1.5", groups=32, base_width=4, **options
    )


@register_model(_defaults(plain_twin="resnet18"))
def se_resnet18(**options: Any) -> ResNet:
    """SE-ResNet-18."""
    return build_resnet(BasicBlock, (2, 2, 2, 2), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet34"))
def se_resnet34(**options: Any) -> ResNet:
    """SE-ResNet-34."""
    return build_resnet(BasicBlock, (3, 4, 6, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet50"))
def se_resnet50(**options: Any) -> ResNet:
    """SE-ResNet-50 as in the paper (r=16, stride on the 1x1 conv)."""
    return build_resnet(Bottleneck, (3, 4, 6, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet101"))
def se_resnet101(**options: Any) -> ResNet:
    """SE-ResNet-101."""
    return build_resnet(Bottleneck, (3, 4, 23, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnet152"))
def se_resnet152(**options: Any) -> ResNet:
    """SE-ResNet-152."""
    return build_resnet(Bottleneck, (3, 8, 36, 3), with_se=True, default_stride="v1", **options)


@register_model(_defaults(plain_twin="resnext50_32x4d"))
def se_resnext50_32x4d(**options: Any) -> ResNet:
    """SE-ResNeXt-50 32x4d."""
    return build_resnet(
        Bottleneck, (3, 4, 6, 3), with_se=True, default_stride="v1.5", groups=32, base_width=4, **options
    )


@register_model(_defaults(plain_twin="resnext101_32x4d"))
def se_resnext101_32x4d(**options: Any) -> ResNet:
    """SE-ResNeXt-101 32x4d."""
    return build_resnet(
        Bottleneck, (3, 4, 23, 3), with_se=True, default_stride="v1.5", groups=32, base_width=4, **options
    )
