"""``sedeploy info``: a model's size and compute, per stage, and what its SE blocks cost over the plain twin.

On an exported ONNX it reads the ``sedeploy.*`` metadata export wrote (no PyTorch); on a zoo name it builds the
model on PyTorch's meta device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sedeploy.optional import import_optional

if TYPE_CHECKING:
    from sedeploy.artifacts.metadata import ModelMetadata
    from sedeploy.models.complexity import Complexity


@dataclass(frozen=True)
class ModelInfo:
    """What ``sedeploy info`` reports: the model's complexity and, for SE models, its plain twin's."""

    arch: str
    options: dict[str, Any]
    num_classes: int
    complexity: Complexity
    plain_twin: str | None = None
    plain_complexity: Complexity | None = None
    plain_twin_options: dict[str, Any] | None = None

    @property
    def se_overhead(self) -> dict[str, float] | None:
        """Relative extra compute and parameters over the plain twin, in percent."""
        if self.plain_complexity is None:
            return None
        plain = self.plain_complexity
        return {
            "macs_pct": 100.0 * (self.complexity.macs / plain.macs - 1.0),
            "params_pct": 100.0 * (self.complexity.params / plain.params - 1.0),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report; MACs are multiply-accumulates, FLOPs = 2 x MACs."""
        data: dict[str, Any] = {
            "arch": self.arch,
            "options": self.options,
            "num_classes": self.num_classes,
            **self.complexity.to_dict(),
            "units": "macs = multiply-accumulates per image; gflops = 2 x gmacs "
            "(the SENet paper's 'GFLOPs' column is gmacs)",
        }
        if self.plain_complexity is not None:
            data["plain_twin"] = {
                "arch": self.plain_twin,
                "options": dict(self.plain_twin_options or {}),
                **self.plain_complexity.to_dict(),
            }
            data["se_overhead"] = self.se_overhead
        return data

    def to_text(self) -> str:
        """Human-readable report."""
        cx = self.complexity
        c, h, w = cx.input_size
        lines = [
            f"{self.arch}  input {c}x{h}x{w}, {self.num_classes} classes",
            f"  parameters   {cx.params:,} ({cx.params / 1e6:.2f} M), "
            f"plus {cx.buffer_values:,} BatchNorm running statistics",
            f"  compute      {cx.gmacs:.4f} GMACs = {cx.gflops:.4f} GFLOPs per image "
            "(the SENet paper's 'GFLOPs' are GMACs)",
            "",
            f"  {'stage':<8} {'output':>14} {'GMACs':>9} {'params':>12}",
        ]
        for stage in cx.stages:
            shape = "x".join(str(v) for v in stage.output_shape)
            lines.append(f"  {stage.name:<8} {shape:>14} {stage.gmacs:>9.4f} {stage.params:>12,}")
        if cx.se_params or cx.se_macs:
            lines.append(
                f"\n  SE blocks    {cx.se_macs / 1e9:.4f} GMACs ({100 * cx.se_macs / cx.macs:.2f}% of compute), "
                f"{cx.se_params:,} params"
            )
        overhead = self.se_overhead
        if overhead is not None and self.plain_complexity is not None:
            lines.append(
                f"  vs {self.plain_twin}{_options_text(self.plain_twin_options)}: "
                f"{self.plain_complexity.gmacs:.4f} GMACs, "
                f"{self.plain_complexity.params / 1e6:.2f} M params -> SE adds "
                f"{overhead['macs_pct']:+.2f}% compute, {overhead['params_pct']:+.2f}% params"
            )
        return "\n".join(lines)


def model_info(arch: str, img_size: tuple[int, int] | None = None, **options: Any) -> ModelInfo:
    """Complexity report for a zoo model built with ``options``, at ``img_size`` (H, W) or its default size.

    Models are built on PyTorch's meta device: no weights are allocated. PyTorch is imported here, when a
    zoo model is described, not when the module is (without it: one line naming the ``torch`` extra).
    """
    torch = import_optional("torch")

    from sedeploy.models.complexity import estimate_complexity
    from sedeploy.models.registry import create_model, get_entry, model_defaults
    from sedeploy.models.senet import RESNET_SE_OPTION_NAMES  # options a plain twin does not take

    entry = get_entry(arch)
    with torch.device("meta"):
        model = create_model(arch, img_size=img_size, **options)
        complexity = estimate_complexity(model)
        plain_complexity = None
        twin = entry.defaults.plain_twin
        twin_options: dict[str, Any] | None = None
        if twin is not None:
            twin_options = dict(entry.defaults.plain_twin_options)
            twin_options.update((k, v) for k, v in options.items() if k not in RESNET_SE_OPTION_NAMES)
            plain_complexity = estimate_complexity(create_model(twin, img_size=img_size, **twin_options))
    defaults = model_defaults(model)
    assert defaults is not None  # create_model always attaches them
    return ModelInfo(
        arch=arch,
        options=dict(options),
        num_classes=defaults.num_classes,
        complexity=complexity,
        plain_twin=twin,
        plain_complexity=plain_complexity,
        plain_twin_options=twin_options,
    )


def _options_text(options: dict[str, Any] | None) -> str:
    if not options:
        return ""
    return " (" + ", ".join(f"{key}={value!r}" for key, value in options.items()) + ")"


def is_onnx_path(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names an ONNX file (``info`` then reads its metadata) rather than a zoo name."""
    return str(target).lower().endswith(".onnx") or Path(target).is_file()


@dataclass(frozen=True)
class OnnxInfo:
    """What ``sedeploy info`` reports on an exported ONNX: the metadata export wrote, read without PyTorch."""

    path: str
    metadata: ModelMetadata

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report; MACs are multiply-accumulates, FLOPs = 2 x MACs."""
        meta = self.metadata
        return {
            "path": self.path,
            "arch": meta.arch,
            "options": dict(meta.options),
            "input_size": list(meta.input_size),
            "num_classes": meta.num_classes,
            "labels": list(meta.labels) if meta.labels is not None else None,
            "params": meta.params,
            "macs": meta.macs,
            "gmacs": meta.macs / 1e9,
            "gflops": 2 * meta.macs / 1e9,
            "opset": meta.opset,
            "max_batch": meta.max_batch,
            "channel_order": meta.channel_order,
            "input_name": meta.input_name,
            "output_name": meta.output_name,
            "preprocessing": {
                "resize": list(meta.preprocessing.resize),
                "crop": list(meta.preprocessing.crop),
                "crop_pct": meta.preprocessing.crop_pct,
                "mean": list(meta.preprocessing.mean),
                "std": list(meta.preprocessing.std),
                "interpolation": meta.preprocessing.interpolation,
            },
            "sedeploy_version": meta.sedeploy_version,
            "units": "macs = multiply-accumulates per image; gflops = 2 x gmacs",
        }

    def to_text(self) -> str:
        """Human-readable report."""
        meta = self.metadata
        c, h, w = meta.input_size
        pre = meta.preprocessing
        labels = (
            f", labels {', '.join(meta.labels[:5])}{', ...' if len(meta.labels) > 5 else ''}"
            if meta.labels
            else ""
        )
        return "\n".join(
            [
                f"{self.path}: {meta.arch}{_options_text(dict(meta.options))}",
                f"  input        {meta.input_name} {c}x{h}x{w} {meta.channel_order}, max batch {meta.max_batch}; "
                f"output {meta.output_name}, {meta.num_classes} classes{labels}",
                f"  parameters   {meta.params:,} ({meta.params / 1e6:.2f} M)",
                f"  compute      {meta.macs / 1e9:.4f} GMACs = {2 * meta.macs / 1e9:.4f} GFLOPs per image",
                f"  preprocess   resize {list(pre.resize)}, crop {list(pre.crop)} ({pre.interpolation}), "
                f"mean {list(pre.mean)}, std {list(pre.std)}",
                f"  exported     opset {meta.opset} by sedeploy {meta.sedeploy_version}",
            ]
        )


def onnx_info(path: str | os.PathLike[str]) -> OnnxInfo:
    """The report ``sedeploy info`` gives on an exported ONNX, from its ``sedeploy.*`` metadata (no PyTorch)."""
    from sedeploy.artifacts.metadata import read_metadata

    return OnnxInfo(path=str(path), metadata=read_metadata(path))
