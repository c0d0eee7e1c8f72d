"""FP16-typed ONNX graphs: onnxconverter-common's converter with FP32 graph inputs and outputs kept.

TensorRT 11 runs a strongly typed network in the types its ONNX gives it, so an
FP16 engine starts as an FP16-typed graph; ONNX Runtime runs the same file, which
is how its numerics are checked without a GPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sedeploy.optional import import_optional
from sedeploy.precision._common import ModelInput, copy_metadata, load, save
from sedeploy.precision.recipe import PrecisionError

logger = logging.getLogger(__name__)

DEFAULT_FP16_BLOCK_LIST: tuple[str, ...] = ()
"""Op types kept in FP32 on top of onnxconverter-common's own block-list (non-numeric and ML ops)."""


def convert_fp16(
    model_path: ModelInput,
    output_path: Path,
    block_list: Sequence[str] = DEFAULT_FP16_BLOCK_LIST,
) -> dict[str, Any]:
    """Write an FP16-typed copy of ``model_path`` with FP32 inputs and outputs kept; return the recipe.

    Ops in ``block_list`` (added to onnxconverter-common's own list) stay FP32,
    with casts inserted by the converter around them.
    """
    float16 = import_optional("onnxconverter_common.float16", "cpu")
    model = load(model_path)
    op_block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(block_list))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=op_block_list
            )
    except Exception as error:
        raise PrecisionError(f"FP16 conversion of {model_path} failed: {error}") from error
    if caught:
        # The converter warns once per weight it clamps to FP16's range; say it once.
        logger.info(
            "FP16 conversion clamped %d value(s) to FP16's range, e.g. %s", len(caught), caught[0].message
        )
    copy_metadata(model, converted)
    save(converted, output_path)
    return {"fp16_block_list": sorted(block_list), "io_types": "float32"}
