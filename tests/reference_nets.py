"""Independent re-implementations of the checkpoint layouts sedeploy converts, for the tests.

Each network here is written from its source's documented structure (timm's
``resnet.py`` with ``attn_layer='se'``, the original SENet as in
``pretrainedmodels``/timm's ``legacy_*``, the seed notebook's Linear SEBlock),
not from sedeploy's code, so its ``state_dict()`` is in that layout by
construction and its logits are what the source computes.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and BatchNorm statistic non-trivial values, so folding and layouts are really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.4 - 0.2)
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


def _make_divisible(value: float, divisor: int = 8) -> int:
    # timm.layers.make_divisible with round_limit=0, as SEModule calls it.
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class TimmSEModule(nn.Module):
    """timm.layers.SEModule: 1x1-conv FCs with bias, reduced width rounded to a multiple of 8."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = _make_divisible(channels / 16)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True))))))


class TimmBasicBlock(nn.Module):
    """timm's BasicBlock: conv-bn-act(-aa), conv-bn, SE, add, act."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        reduce_first: int = 1,
        aa: bool = False,
        attn: bool = True,
        **_: int,
    ) -> None:
        super().__init__()
        first_planes = planes // reduce_first
        use_aa = aa and stride == 2
        self.conv1 = nn.Conv2d(
            inplanes, first_planes, 3, stride=1 if use_aa else stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(first_planes)
        self.drop_block = nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.aa = nn.AvgPool2d(2) if use_aa else nn.Identity()  # create_aa falls back to AvgPool2d(stride)
        self.conv2 = nn.Conv2d(first_planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = TimmSEModule(planes) if attn else None
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


class TimmBottleneck(nn.Module):
    """timm's Bottleneck: the stride is on the 3x3 conv (v1.5; with ``aa`` a 2x2 avg pool after it), SE after bn3."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        groups: int = 1,
        base_width: int = 64,
        reduce_first: int = 1,
        aa: bool = False,
        attn: bool = True,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * groups)
        first_planes = width // reduce_first
        out_planes = planes * 4
        use_aa = aa and stride == 2
        self.conv1 = nn.Conv2d(inplanes, first_planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(first_planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            first_planes, width, 3, stride=1 if use_aa else stride, padding=1, groups=groups, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.AvgPool2d(2) if use_aa else nn.Identity()
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.se = TimmSEModule(out_planes) if attn else None
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


def _timm_padding(kernel_size: int, stride: int) -> int:
    return ((stride - 1) + (kernel_size - 1)) // 2


def _timm_downsample(
    inplanes: int, out_planes: int, stride: int, kernel_size: int, avg_down: bool
) -> nn.Sequential:
    """timm's downsample_avg (pool, 1x1 conv, bn) or downsample_conv (strided conv, bn)."""
    if avg_down:
        pool: nn.Module = (
            nn.Identity() if stride == 1 else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        )
        return nn.Sequential(pool, nn.Conv2d(inplanes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))
    kernel_size = 1 if stride == 1 else kernel_size
    return nn.Sequential(
        nn.Conv2d(
            inplanes,
            out_planes,
            kernel_size,
            stride=stride,
            padding=_timm_padding(kernel_size, stride),
            bias=False,
        ),
        nn.BatchNorm2d(out_planes),
    )


class TimmSEResNet(nn.Module):
    """timm's ResNet (resnet.py) with ``block_args=dict(attn_layer='se')`` (seresnet*, seresnext*, senet154).

    ``stem_type`` '' (7x7), 'deep' or 'deep_tiered'; ``avg_down``, ``down_kernel_size``, ``reduce_first``
    (timm's ``block_reduce_first``) and ``aa`` (``aa_layer=nn.AvgPool2d``) as in timm; ``attn=False``
    is the plain twin.
    """

    def __init__(
        self,
        block: type[TimmBasicBlock] | type[TimmBottleneck],
        layers: tuple[int, ...],
        num_classes: int = 1000,
        groups: int = 1,
        base_width: int = 64,
        in_chans: int = 3,
        stem_width: int = 64,
        stem_type: str = "",
        avg_down: bool = False,
        down_kernel_size: int = 1,
        reduce_first: int = 1,
        aa: bool = False,
        attn: bool = True,
    ) -> None:
        super().__init__()
        deep = "deep" in stem_type
        inplanes = stem_width * 2 if deep else 64
        if deep:
            chs = (3 * (stem_width // 4), stem_width) if "tiered" in stem_type else (stem_width, stem_width)
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(in_chans, chs[0], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(chs[0]),
                nn.ReLU(inplace=True),
                nn.Conv2d(chs[0], chs[1], 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(chs[1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(chs[1], inplanes, 3, stride=1, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        # With an AvgPool2d anti-aliasing layer, timm's stem pool is that layer alone: AvgPool2d(2).
        self.maxpool = nn.AvgPool2d(2) if aa else nn.MaxPool2d(3, stride=2, padding=1)
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            out_planes = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out_planes:
                downsample = _timm_downsample(inplanes, out_planes, stride, down_kernel_size, avg_down)
            blocks = []
            for block_index in range(depth):
                blocks.append(
                    block(
                        inplanes,
                        planes,
                        stride if block_index == 0 else 1,
                        downsample if block_index == 0 else None,
                        groups=groups,
                        base_width=base_width,
                        reduce_first=reduce_first,
                        aa=aa,
                        attn=attn,
                    )
                )
                inplanes = out_planes
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.global_pool(x), 1))


class LegacySEModule(nn.Module):
    """pretrainedmodels' SEModule: ``channels // reduction`` wide, 1x1 convs with bias."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class LegacyBottleneck(nn.Module):
    """The original release's bottlenecks, by ``kind``.

    ``resnet``: SEResNetBottleneck (stride on the first 1x1, Caffe style); ``resnext``: SEResNeXtBottleneck
    (``floor(planes * 4 / 64) * groups`` wide, stride on the 3x3); ``senet``: SEBottleneck of SENet-154
    (1x1 to ``2 * planes``, grouped 3x3 to ``4 * planes``, stride on the 3x3).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        groups: int,
        stride: int,
        downsample: nn.Module | None,
        kind: str,
    ) -> None:
        super().__init__()
        if kind == "senet":
            first, width = planes * 2, planes * 4
        elif kind == "resnext":
            first = width = math.floor(planes * (4 / 64)) * groups
        else:
            first = width = planes
        stride_1x1 = stride if kind == "resnet" else 1
        self.conv1 = nn.Conv2d(inplanes, first, 1, bias=False, stride=stride_1x1)
        self.bn1 = nn.BatchNorm2d(first)
        self.conv2 = nn.Conv2d(
            first, width, 3, stride=stride // stride_1x1, padding=1, groups=groups, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = LegacySEModule(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + shortcut)


class LegacyBasicBlock(nn.Module):
    """SEResNetBlock (legacy_seresnet18/34): conv-bn-relu twice, *then* SE on ``planes // 16``, add, relu."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, groups: int, stride: int, downsample: nn.Module | None, kind: str
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = LegacySEModule(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.se_module(out) + shortcut)


class LegacySENet(nn.Module):
    """pretrainedmodels' SENet (timm's legacy_*).

    ``kind``: ``resnet`` / ``resnext`` / ``senet`` bottlenecks or ``basic`` blocks; ``auto`` is ``resnext``
    when ``groups > 1``. ``input_3x3`` is SENet-154's three-conv layer0 (64, 64, ``inplanes``);
    ``downsample_kernel_size``/``downsample_padding`` apply to layer2..layer4 (SENet-154: 3 and 1).
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        groups: int = 1,
        num_classes: int = 1000,
        kind: str = "auto",
        in_chans: int = 3,
        inplanes: int = 64,
        input_3x3: bool = False,
        downsample_kernel_size: int = 1,
        downsample_padding: int = 0,
    ) -> None:
        super().__init__()
        if kind == "auto":
            kind = "resnext" if groups > 1 else "resnet"
        block: type[LegacyBasicBlock] | type[LegacyBottleneck] = (
            LegacyBasicBlock if kind == "basic" else LegacyBottleneck
        )
        if input_3x3:
            stem = [
                ("conv1", nn.Conv2d(in_chans, 64, 3, stride=2, padding=1, bias=False)),
                ("bn1", nn.BatchNorm2d(64)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False)),
                ("bn2", nn.BatchNorm2d(64)),
                ("relu2", nn.ReLU(inplace=True)),
                ("conv3", nn.Conv2d(64, inplanes, 3, stride=1, padding=1, bias=False)),
                ("bn3", nn.BatchNorm2d(inplanes)),
                ("relu3", nn.ReLU(inplace=True)),
            ]
        else:
            stem = [
                ("conv1", nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False)),
                ("bn1", nn.BatchNorm2d(inplanes)),
                ("relu1", nn.ReLU(inplace=True)),
            ]
        self.layer0 = nn.Sequential(OrderedDict(stem))
        self.pool0 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # Caffe-compatible: no padding, rounds up
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            kernel, padding = (1, 0) if index == 0 else (downsample_kernel_size, downsample_padding)
            out_planes = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out_planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out_planes, kernel, stride=stride, padding=padding, bias=False),
                    nn.BatchNorm2d(out_planes),
                )
            blocks = [block(inplanes, planes, groups, stride, downsample, kind)]
            inplanes = out_planes
            blocks += [block(inplanes, planes, groups, 1, None, kind) for _ in range(1, depth)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.pool0(self.layer0(x))))))
        return self.last_linear(torch.flatten(self.avg_pool(x), 1))


class SeedSEBlock(nn.Module):
    """The seed notebook's SEBlock: Linear FCs without bias, ``view`` and ``expand_as``."""

    def __init__(self, input_channels: int, reduction_ratio: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(input_channels, input_channels // reduction_ratio, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(input_channels // reduction_ratio, input_channels, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, channels, _, _ = x.size()
        y = self.avg_pool(x).view(batch_size, channels)
        y = self.sigmoid(self.fc2(self.relu(self.fc1(y)))).view(batch_size, channels, 1, 1)
        return x * y.expand_as(x)


_B, _X = TimmBasicBlock, TimmBottleneck
_D = {"stem_width": 32, "stem_type": "deep", "avg_down": True}
_T = {"stem_width": 32, "stem_type": "deep_tiered", "avg_down": True}
_X32x4 = {"groups": 32, "base_width": 4}
_X32x8 = {"groups": 32, "base_width": 8}
_X64x4 = {"groups": 64, "base_width": 4}
TIMM_ARGS: dict[str, tuple[type[nn.Module], tuple[int, ...], dict[str, object]]] = {
    # timm/models/resnet.py entry points: (block, layers, ResNet keyword arguments).
    "seresnet18": (_B, (2, 2, 2, 2), {}),
    "seresnet34": (_B, (3, 4, 6, 3), {}),
    "seresnet50": (_X, (3, 4, 6, 3), {}),
    "seresnet50t": (_X, (3, 4, 6, 3), _T),
    "seresnet101": (_X, (3, 4, 23, 3), {}),
    "seresnet152": (_X, (3, 8, 36, 3), {}),
    "seresnet152d": (_X, (3, 8, 36, 3), _D),
    "seresnet200d": (_X, (3, 24, 36, 3), _D),
    "seresnet269d": (_X, (3, 30, 48, 8), _D),
    "seresnext26d_32x4d": (_X, (2, 2, 2, 2), {**_X32x4, **_D}),
    "seresnext26t_32x4d": (_X, (2, 2, 2, 2), {**_X32x4, **_T}),
    "seresnext50_32x4d": (_X, (3, 4, 6, 3), _X32x4),
    "seresnext101_32x4d": (_X, (3, 4, 23, 3), _X32x4),
    "seresnext101_32x8d": (_X, (3, 4, 23, 3), _X32x8),
    "seresnext101d_32x8d": (_X, (3, 4, 23, 3), {**_X32x8, **_D}),
    "seresnext101_64x4d": (_X, (3, 4, 23, 3), _X64x4),
    "senet154": (
        _X,
        (3, 8, 36, 3),
        {**_X64x4, "stem_type": "deep", "down_kernel_size": 3, "reduce_first": 2},
    ),
    "seresnetaa50d": (_X, (3, 4, 6, 3), {**_D, "aa": True}),
    "seresnextaa101d_32x8d": (_X, (3, 4, 23, 3), {**_X32x8, **_D, "aa": True}),
    "seresnextaa201d_32x8d": (_X, (3, 24, 36, 4), {**_X32x8, **_D, "stem_width": 64, "aa": True}),
    # timm's plain twins of some of them (no attn_layer).
    "resnet50t": (_X, (3, 4, 6, 3), {**_T, "attn": False}),
    "resnet152d": (_X, (3, 8, 36, 3), {**_D, "attn": False}),
    "resnet200d": (_X, (3, 24, 36, 3), {**_D, "attn": False}),
    "resnext101_32x8d": (_X, (3, 4, 23, 3), {**_X32x8, "attn": False}),
    "resnext101_64x4d": (_X, (3, 4, 23, 3), {**_X64x4, "attn": False}),
    "resnetaa50d": (_X, (3, 4, 6, 3), {**_D, "aa": True, "attn": False}),
}
LEGACY_ARGS: dict[str, tuple[tuple[int, ...], dict[str, object]]] = {
    # timm/models/senet.py entry points: (layers, SENet keyword arguments).
    "legacy_seresnet18": ((2, 2, 2, 2), {"kind": "basic"}),
    "legacy_seresnet34": ((3, 4, 6, 3), {"kind": "basic"}),
    "legacy_seresnet50": ((3, 4, 6, 3), {"kind": "resnet"}),
    "legacy_seresnet101": ((3, 4, 23, 3), {"kind": "resnet"}),
    "legacy_seresnet152": ((3, 8, 36, 3), {"kind": "resnet"}),
    "legacy_seresnext26_32x4d": ((2, 2, 2, 2), {"kind": "resnext", "groups": 32}),
    "legacy_seresnext50_32x4d": ((3, 4, 6, 3), {"kind": "resnext", "groups": 32}),
    "legacy_seresnext101_32x4d": ((3, 4, 23, 3), {"kind": "resnext", "groups": 32}),
    "legacy_senet154": (
        (3, 8, 36, 3),
        {
            "kind": "senet",
            "groups": 64,
            "inplanes": 128,
            "input_3x3": True,
            "downsample_kernel_size": 3,
            "downsample_padding": 1,
        },
    ),
}


def timm_reference(name: str, num_classes: int = 1000) -> nn.Module:
    """The independent reference network of timm name ``name``, with its own (timm's or legacy) layout."""
    if name in LEGACY_ARGS:
        layers, legacy_kwargs = LEGACY_ARGS[name]
        return LegacySENet(layers, num_classes=num_classes, **legacy_kwargs)  # type: ignore[arg-type]
    block, layers, kwargs = TIMM_ARGS[name]
    return TimmSEResNet(block, layers, num_classes=num_classes, **kwargs)  # type: ignore[arg-type]
