"""Parameters and multiply-accumulates of a model at a given input size: the one counting routine.

MACs are counted per image for convolutions (``out elements x in_channels/groups
x kernel area``), linear layers (``out x in``) and, so that SE overhead is
visible, each SE block's squeeze (one add per input element) and scale (one
multiply per element). Normalisation, activations and residual additions are
not counted, as in the SENet paper. GFLOPs = 2 x GMACs; the paper's "GFLOPs"
column counts multiply-adds, i.e. GMACs here.

The count runs the model once on PyTorch's ``meta`` device: shapes only, no
arithmetic, so 224x224 on SE-ResNet-152 costs milliseconds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sedeploy.models.registry import model_defaults
from sedeploy.models.senet import SqueezeExcite


@dataclass(frozen=True)
class StageComplexity:
    """One stage's share (``stem``, ``layer1`` ... ``layer4``, ``head``) and its output shape (C, H, W)."""

    name: str
    macs: int
    params: int
    output_shape: tuple[int, ...]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


@dataclass(frozen=True)
class Complexity:
    """Per-image complexity at ``input_size`` (C, H, W).

    ``buffer_values`` counts non-trainable floating-point state (BatchNorm running
    mean and variance); Keras reports these as "non-trainable params".
    """

    input_size: tuple[int, int, int]
    params: int
    buffer_values: int
    macs: int
    se_macs: int
    se_params: int
    stages: tuple[StageComplexity, ...]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, with the derived figures spelled out."""
        data = asdict(self)
        data.update(
            params_m=self.params / 1e6,
            gmacs=self.gmacs,
            gflops=self.gflops,
            se_gmacs=self.se_macs / 1e9,
            input_size=list(self.input_size),
        )
        data["stages"] = [
            {**asdict(stage), "gmacs": stage.gmacs, "output_shape": list(stage.output_shape)}
            for stage in self.stages
        ]
        return data


def _layer_macs(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    """MACs per image of one module call, or 0 for modules that are not counted."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel_area = 1
        for size in module.kernel_size:
            kernel_area *= size
        per_output = (module.in_channels // module.groups) * kernel_area
        return int(output[0].numel()) * per_output
    if isinstance(module, nn.Linear):
        return int(output[0].numel()) * module.in_features
    if isinstance(module, SqueezeExcite):
        # Squeeze reads every element once, scale multiplies every element once.
        return 2 * int(inputs[0][0].numel())
    return 0


def _on_meta(model: nn.Module) -> nn.Module:
    tensors = list(model.parameters()) + list(model.buffers())
    if tensors and all(t.is_meta for t in tensors):
        return model
    return copy.deepcopy(model).to("meta")


def _top_level_name(name: str) -> str:
    return name.split(".", 1)[0]


def estimate_complexity(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> Complexity:
    """Count parameters and per-image MACs of ``model`` for an input of ``input_size`` (C, H, W).

    Without ``input_size``, the model's ``default_config.input_size`` (set by
    :func:`sedeploy.create_model`) is used. The model itself is not run or changed.
    """
    if input_size is None:
        config = model_defaults(model)
        if config is None:
            raise ValueError("input_size is required for models not built by sedeploy.create_model")
        input_size = config.input_size
    channels, height, width = (int(v) for v in input_size)
    groups: dict[str, str] = getattr(model, "complexity_groups", {})
    meta_model = _on_meta(model)
    was_training = meta_model.training
    meta_model.eval()  # BatchNorm in train mode refuses 1x1 feature maps at batch 1

    macs_by_module: dict[str, int] = {}
    stage_shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in meta_model.named_modules():
        if not name:
            continue

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                macs_by_module[name] = macs_by_module.get(name, 0) + _layer_macs(module, inputs, output)
                if "." not in name:
                    stage = groups.get(name, name)
                    stage_shapes[stage] = tuple(output.shape[1:])

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            meta_model(torch.empty((1, channels, height, width), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
        meta_model.train(was_training)

    se_prefixes = [name + "." for name, m in meta_model.named_modules() if isinstance(m, SqueezeExcite)]
    se_macs = sum(
        macs
        for name, macs in macs_by_module.items()
        if isinstance(meta_model.get_submodule(name), SqueezeExcite) or name.startswith(tuple(se_prefixes))
    )
    stage_macs: dict[str, int] = {}
    stage_params: dict[str, int] = {}
    for name, macs in macs_by_module.items():
        stage = groups.get(_top_level_name(name), _top_level_name(name))
        stage_macs[stage] = stage_macs.get(stage, 0) + macs
    for name, param in meta_model.named_parameters():
        stage = groups.get(_top_level_name(name), _top_level_name(name))
        stage_params[stage] = stage_params.get(stage, 0) + param.numel()
    stages = tuple(
        StageComplexity(stage, stage_macs.get(stage, 0), stage_params.get(stage, 0), shape)
        for stage, shape in stage_shapes.items()
    )
    return Complexity(
        input_size=(channels, height, width),
        params=sum(p.numel() for p in meta_model.parameters()),
        buffer_values=sum(b.numel() for b in _float_buffers(meta_model)),
        macs=sum(macs_by_module.values()),
        se_macs=se_macs,
        se_params=sum(
            p.numel() for m in meta_model.modules() if isinstance(m, SqueezeExcite) for p in m.parameters()
        ),
        stages=stages,
    )


def _float_buffers(model: nn.Module) -> Iterator[torch.Tensor]:
    return (b for b in model.buffers() if b.is_floating_point())
