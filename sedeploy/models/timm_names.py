"""timm's SE-ResNet family under timm's own names, and the original SENet release as timm's ``legacy_*``.

Each name builds the network timm builds for it (timm 1.0, ``timm/models/resnet.py`` and
``timm/models/senet.py``): same module names, shapes and computation, so a checkpoint written by timm
loads as it is and gives timm's logits, and each carries timm's default preprocessing (input size,
crop, interpolation of the name's default pretrained tag). The architecture is the name: these models
take only ``num_classes`` and ``in_chans`` (and ``img_size``), the options of sedeploy's own
``se_resnet*`` names are fixed here.

Two checkpoint layouts exist for these networks (see :mod:`sedeploy.models.checkpoint`): timm's
``resnet.py`` names (``timm``) and the original release's (``legacy``: ``layer0.*``,
``se_module``, ``last_linear``). Each name expects one of them; :func:`fitting_models` finds the names
whose tensors a checkpoint matches, so a mismatch can say which name to use instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sedeploy.models.registry import ModelDefaults, register_model
from sedeploy.models.senet import BasicBlock, Bottleneck, ResNet, build_resnet

logger = logging.getLogger(__name__)

_R18 = (2, 2, 2, 2)
_R26 = (2, 2, 2, 2)
_R34 = (3, 4, 6, 3)
_R50 = (3, 4, 6, 3)
_R101 = (3, 4, 23, 3)
_R152 = (3, 8, 36, 3)
_R200 = (3, 24, 36, 3)
_R201 = (3, 24, 36, 4)
_R269 = (3, 30, 48, 8)

# Option sets, in sedeploy's terms, for timm's variant letters (its ResNet docstring):
_TIMM: dict[str, Any] = {"stride_placement": "v1.5"}  # timm strides in the 3x3 conv
_TIMM_SE: dict[str, Any] = {**_TIMM, "se_divisor": 8}  # and rounds SE widths to multiples of 8
_D = {"stem": "deep", "stem_width": 32, "downsample": "avg"}  # "d": deep 32-32-64 stem, avg-pool shortcut
_T = {"stem": "tiered", "stem_width": 32, "downsample": "avg"}  # "t": tiered 24-32-64 stem
_AA = {"aa": True}  # avg-pool anti-aliasing (timm's aa_layer=nn.AvgPool2d)
_SENET154 = {"stem": "deep", "stem_width": 64, "downsample": "conv3x3", "reduce_first": 2}
_LEGACY_RESNET = {"stem": "legacy", "stride_placement": "v1"}  # Caffe SE-ResNet: stride on the first 1x1
_LEGACY_RESNEXT = {"stem": "legacy", "stride_placement": "v1.5"}
_LEGACY_BASIC = {"stem": "legacy", "block_style": "legacy"}
_LEGACY_SENET154 = {**_SENET154, "stem": "legacy_deep", "stride_placement": "v1.5"}


@dataclass(frozen=True)
class TimmModel:
    """One registered timm name: its network, the checkpoint layout it expects, its preprocessing."""

    name: str
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    layout: str
    se: bool = True
    groups: int = 1
    base_width: int = 64
    options: tuple[tuple[str, Any], ...] = ()
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    plain_twin: str | None = None
    plain_twin_options: tuple[tuple[str, Any], ...] = ()

    def build(self, num_classes: int = 1000, in_chans: int = 3) -> ResNet:
        """The network, built as timm builds it."""
        return build_resnet(
            self.block,
            self.layers,
            with_se=self.se,
            default_stride="v1.5",
            groups=self.groups,
            base_width=self.base_width,
            num_classes=num_classes,
            in_chans=in_chans,
            **dict(self.options),
        )

    @property
    def defaults(self) -> ModelDefaults:
        return ModelDefaults(
            input_size=(3, self.input_size, self.input_size),
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
            plain_twin=self.plain_twin,
            plain_twin_options=self.plain_twin_options,
        )


def _timm(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, int, int, int],
    *variants: Mapping[str, Any],
    se: bool = True,
    twin: str | None = None,
    twin_options: Mapping[str, Any] | None = None,
    **fields: Any,
) -> TimmModel:
    options: dict[str, Any] = dict(_TIMM_SE if se else _TIMM)
    for variant in variants:
        options.update(variant)
    return TimmModel(
        name,
        block,
        layers,
        "timm",
        se=se,
        options=tuple(options.items()),
        plain_twin=twin,
        plain_twin_options=tuple((twin_options or {}).items()),
        **fields,
    )


def _legacy(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: tuple[int, int, int, int],
    options: Mapping[str, Any],
    twin: str | None = None,
    interpolation: str = "bilinear",
    **fields: Any,
) -> TimmModel:
    twin_options = {"stem": "legacy"} if twin else {}
    return TimmModel(
        name,
        block,
        layers,
        "legacy",
        options=tuple(options.items()),
        interpolation=interpolation,
        plain_twin=twin,
        plain_twin_options=tuple(twin_options.items()),
        **fields,
    )


_V15 = {"stride_placement": "v1.5"}
_RESNEXT_32X4D: dict[str, Any] = {"groups": 32, "base_width": 4}
_RESNEXT_32X8D: dict[str, Any] = {"groups": 32, "base_width": 8}
_RESNEXT_64X4D: dict[str, Any] = {"groups": 64, "base_width": 4}

TIMM_MODELS: dict[str, TimmModel] = {
    spec.name: spec
    for spec in (
        # timm's resnet.py: SE-ResNets and SE-ResNeXts (attn_layer='se').
        _timm("seresnet18", BasicBlock, _R18, twin="resnet18"),
        _timm("seresnet34", BasicBlock, _R34, twin="resnet34"),
        _timm("seresnet50", Bottleneck, _R50, twin="resnet50", twin_options=_V15, crop_pct=0.95),
        _timm("seresnet50t", Bottleneck, _R50, _T, twin="resnet50t"),
        _timm("seresnet101", Bottleneck, _R101, twin="resnet101", twin_options=_V15),
        _timm("seresnet152", Bottleneck, _R152, twin="resnet152", twin_options=_V15),
        _timm("seresnet152d", Bottleneck, _R152, _D, twin="resnet152d", input_size=256, crop_pct=0.95),
        _timm("seresnet200d", Bottleneck, _R200, _D, twin="resnet200d", input_size=256),
        _timm("seresnet269d", Bottleneck, _R269, _D, input_size=256),
        _timm("seresnext26d_32x4d", Bottleneck, _R26, _D, **_RESNEXT_32X4D),
        _timm("seresnext26t_32x4d", Bottleneck, _R26, _T, **_RESNEXT_32X4D),
        _timm("seresnext50_32x4d", Bottleneck, _R50, twin="resnext50_32x4d", **_RESNEXT_32X4D),
        _timm("seresnext101_32x4d", Bottleneck, _R101, twin="resnext101_32x4d", **_RESNEXT_32X4D),
        _timm(
            "seresnext101_32x8d", Bottleneck, _R101, twin="resnext101_32x8d", crop_pct=0.95, **_RESNEXT_32X8D
        ),
        _timm("seresnext101d_32x8d", Bottleneck, _R101, _D, crop_pct=0.95, **_RESNEXT_32X8D),
        _timm("seresnext101_64x4d", Bottleneck, _R101, twin="resnext101_64x4d", **_RESNEXT_64X4D),
        _timm("senet154", Bottleneck, _R152, _SENET154, **_RESNEXT_64X4D),
        _timm("seresnetaa50d", Bottleneck, _R50, _D, _AA, twin="resnetaa50d"),
        _timm(
            "seresnextaa101d_32x8d",
            Bottleneck,
            _R101,
            _D,
            _AA,
            input_size=288,
            crop_pct=0.95,
            **_RESNEXT_32X8D,
        ),
        _timm(
            "seresnextaa201d_32x8d",
            Bottleneck,
            _R201,
            _D,
            _AA,
            {"stem_width": 64},
            input_size=384,
            crop_pct=1.0,
            **_RESNEXT_32X8D,
        ),
        # Their plain twins, where timm has one under a name sedeploy does not already use.
        _timm("resnet50t", Bottleneck, _R50, _T, se=False),
        _timm("resnet152d", Bottleneck, _R152, _D, se=False, input_size=256, crop_pct=0.95),
        _timm("resnet200d", Bottleneck, _R200, _D, se=False, input_size=256, crop_pct=0.95),
        _timm("resnext101_32x8d", Bottleneck, _R101, se=False, interpolation="bilinear", **_RESNEXT_32X8D),
        _timm("resnext101_64x4d", Bottleneck, _R101, se=False, crop_pct=0.95, **_RESNEXT_64X4D),
        _timm("resnetaa50d", Bottleneck, _R50, _D, _AA, se=False, crop_pct=0.95),
        # timm's senet.py: the original SENet release (Caffe weights, pretrainedmodels' layout).
        _legacy(
            "legacy_seresnet18", BasicBlock, _R18, _LEGACY_BASIC, twin="resnet18", interpolation="bicubic"
        ),
        _legacy("legacy_seresnet34", BasicBlock, _R34, _LEGACY_BASIC, twin="resnet34"),
        _legacy("legacy_seresnet50", Bottleneck, _R50, _LEGACY_RESNET, twin="resnet50"),
        _legacy("legacy_seresnet101", Bottleneck, _R101, _LEGACY_RESNET, twin="resnet101"),
        _legacy("legacy_seresnet152", Bottleneck, _R152, _LEGACY_RESNET, twin="resnet152"),
        _legacy(
            "legacy_seresnext26_32x4d",
            Bottleneck,
            _R26,
            _LEGACY_RESNEXT,
            interpolation="bicubic",
            **_RESNEXT_32X4D,
        ),
        _legacy(
            "legacy_seresnext50_32x4d",
            Bottleneck,
            _R50,
            _LEGACY_RESNEXT,
            twin="resnext50_32x4d",
            **_RESNEXT_32X4D,
        ),
        _legacy(
            "legacy_seresnext101_32x4d",
            Bottleneck,
            _R101,
            _LEGACY_RESNEXT,
            twin="resnext101_32x4d",
            **_RESNEXT_32X4D,
        ),
        _legacy("legacy_senet154", Bottleneck, _R152, _LEGACY_SENET154, **_RESNEXT_64X4D),
    )
}
"""Every timm name sedeploy registers, by name."""

LEGACY_COUNTERPARTS = {"senet154": "legacy_senet154"}
"""A name that is both timm's and ``pretrainedmodels``' (which ships the original release's weights):
with weights in the legacy layout it builds the legacy model. ``pretrainedmodels``' other names
(``se_resnet50``, ``se_resnext101_32x4d``, ...) are sedeploy's own, whose options follow the layout."""


def _register(spec: TimmModel) -> None:
    def constructor(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
        return spec.build(num_classes=num_classes, in_chans=in_chans)

    constructor.__name__ = constructor.__qualname__ = spec.name
    kind = "the original SENet release's" if spec.layout == "legacy" else "timm's"
    constructor.__doc__ = f"{spec.name}: {kind} network of this name ({spec.layout} checkpoint layout)."
    register_model(spec.defaults)(constructor)


for _spec in TIMM_MODELS.values():
    _register(_spec)


def expected_layout(name: str) -> str | None:
    """The checkpoint layout timm name ``name`` expects, or None for sedeploy's own (configurable) names."""
    spec = TIMM_MODELS.get(name)
    return spec.layout if spec is not None else None


def _signature(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def _stage_depths(signature: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    depths = []
    for stage in range(1, 5):
        prefix = f"layer{stage}."
        indices = {key[len(prefix) :].split(".", 1)[0] for key in signature if key.startswith(prefix)}
        depths.append(1 + max((int(i) for i in indices if i.isdigit()), default=-1))
    return tuple(depths)


def fitting_models(
    state_dict: Mapping[str, torch.Tensor], layout: str, num_classes: int = 1000, in_chans: int = 3
) -> list[str]:
    """The timm names of ``layout`` whose tensors (names and shapes) are exactly ``state_dict``'s.

    ``state_dict`` uses sedeploy's names (a converted checkpoint). Names whose networks differ only
    in parameter-free layers (the ``aa`` pools) all fit; the candidates are built on the meta device.
    """
    wanted = _signature(state_dict)
    depths = _stage_depths(wanted)
    fits = []
    for spec in TIMM_MODELS.values():
        if spec.layout != layout or spec.layers != depths:
            continue  # cheap test first: only same-depth candidates are built
        with torch.device("meta"):
            candidate = spec.build(num_classes=num_classes, in_chans=in_chans)
        if _signature(candidate.state_dict()) == wanted:
            fits.append(spec.name)
    logger.debug("weights with %d tensors fit %s", len(wanted), fits or "no timm name")
    return fits
