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
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, **_: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = TimmSEModule(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.se(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.act2(out + shortcut)


class TimmBottleneck(nn.Module):
    """timm's Bottleneck: the stride is on the 3x3 conv (v1.5), SE after bn3."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        groups: int,
        base_width: int,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * groups)
        out_planes = planes * 4
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.se = TimmSEModule(out_planes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        out = self.se(self.bn3(self.conv3(out)))
        return self.act3(out + shortcut)


class TimmSEResNet(nn.Module):
    """timm's ResNet with ``block_args=dict(attn_layer='se')`` (seresnet*, seresnext*)."""

    def __init__(
        self,
        block: type[TimmBasicBlock] | type[TimmBottleneck],
        layers: tuple[int, ...],
        num_classes: int = 1000,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                downsample = None
                if stride != 1 or inplanes != planes * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                blocks.append(
                    block(inplanes, planes, stride, downsample, groups=groups, base_width=base_width)
                )
                inplanes = planes * block.expansion
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
    """SEResNetBottleneck (stride on the first 1x1, v1) or SEResNeXtBottleneck (stride on the 3x3)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        groups: int,
        stride: int,
        downsample: nn.Module | None,
        resnext: bool,
    ) -> None:
        super().__init__()
        width = math.floor(planes * (4 / 64)) * groups if resnext else planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False, stride=1 if resnext else stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride if resnext else 1, padding=1, groups=groups, bias=False
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


class LegacySENet(nn.Module):
    """pretrainedmodels' SENet for se_resnet50 (groups=1) / se_resnext50_32x4d (groups=32)."""

    def __init__(self, layers: tuple[int, ...], groups: int = 1, num_classes: int = 1000) -> None:
        super().__init__()
        resnext = groups > 1
        self.layer0 = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                bn1=nn.BatchNorm2d(64),
                relu1=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            )
        )
        inplanes = 64
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                downsample = None
                if block_index == 0 and (stride != 1 or inplanes != planes * 4):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * 4),
                    )
                blocks.append(LegacyBottleneck(inplanes, planes, groups, stride, downsample, resnext))
                inplanes = planes * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
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
