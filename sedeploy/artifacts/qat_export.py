"""What a quantization-aware export records about itself (the optional ``sedeploy.qat`` metadata key).

A QAT export is an INT8 Q/DQ ONNX whose scales were learned, not calibrated. The build takes it as INT8 as it
is and gates it against the float model of the same fine-tuned weights on the fine-tuning's validation images,
so the key names both: written by :func:`sedeploy.training.qat.export_qat`, read here without PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from sedeploy.errors import BadInputError

QAT_METADATA_KEY = "sedeploy.qat"
"""Optional metadata key of a QAT export: JSON, see :class:`QatExport`."""


@dataclass(frozen=True)
class QatExport:
    """A QAT export's own record: its recipe, the checkpoint it came from, its float twin, its validation images."""

    recipe: dict[str, Any]
    """The INT8 recipe the fine-tuning placed its quantizers for (``Int8Recipe.to_dict()`` plus ``learn_scales``)."""
    checkpoint_sha256: str
    float_model: str | None = None
    """File name, in the export's folder, of the FP32 graph with the same fine-tuned weights (the gate's reference)."""
    float_model_sha256: str | None = None
    validation: dict[str, Any] | None = None
    """The fine-tuning's validation images: ``{"folder", "files" (relative to folder; None: all of it),
    "dataset_sha256" (of the folder as the fine-tuning read it)}``."""

    @property
    def flavour(self) -> str:
        return str(self.recipe.get("flavour", "cpu"))

    def to_json(self) -> str:
        return json.dumps(
            {
                "recipe": self.recipe,
                "checkpoint_sha256": self.checkpoint_sha256,
                "float_model": self.float_model,
                "float_model_sha256": self.float_model_sha256,
                "validation": self.validation,
            },
            sort_keys=True,
        )

    def float_model_path(self, export_path: Path) -> Path | None:
        """Where the float twin should be: beside the export, under the name it recorded."""
        return export_path.parent / self.float_model if self.float_model else None


def read_qat_export(model: onnx.ModelProto, where: str = "the model") -> QatExport | None:
    """The ``sedeploy.qat`` record of ``model`` (None: no QAT export); an unreadable one is refused, never guessed."""
    text = next((prop.value for prop in model.metadata_props if prop.key == QAT_METADATA_KEY), None)
    if text is None:
        return None
    try:
        data = json.loads(text)
        recipe = dict(data["recipe"])
        return QatExport(
            recipe=recipe,
            checkpoint_sha256=str(data.get("checkpoint_sha256", "")),
            float_model=data.get("float_model"),
            float_model_sha256=data.get("float_model_sha256"),
            validation=data.get("validation"),
        )
    except (ValueError, KeyError, TypeError):
        raise BadInputError(
            f"{where}: its {QAT_METADATA_KEY} metadata is unreadable; export the QAT run again (export_qat)"
        ) from None


def write_qat_export(model: onnx.ModelProto, record: QatExport) -> None:
    """Set ``model``'s ``sedeploy.qat`` key to ``record`` (replacing one that is there)."""
    kept = [prop for prop in model.metadata_props if prop.key != QAT_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=QAT_METADATA_KEY, value=record.to_json())
