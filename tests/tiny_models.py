"""The tiny SE model several suites export when only a real, small ONNX file matters (not its accuracy)."""

from __future__ import annotations

from pathlib import Path

from sedeploy.export import export_onnx


def export_tiny(output: Path) -> Path:
    """A 3-class SE-PreAct-ResNet at 16x16 (max batch 4), exported to ``output`` without the parity check."""
    return export_onnx(
        "se_preact_resnet",
        img_size=16,
        options={"depths": (1, 1, 1), "widths": (16, 16, 32)},
        num_classes=3,
        max_batch=4,
        check=False,
        output=output,
    ).path
