"""TensorRT backend: build an engine from a precision ONNX file, and run it with pinned memory.

Builder (:func:`build_engine`): the ONNX file from the precision stage (FP32,
FP16-typed or Q/DQ INT8) is parsed into a strongly typed network, so the file's
own types decide the precision; one optimization profile covers the dynamic batch
(``MIN:OPT:MAX``, capped by the ``max_batch`` the export recorded); a timing cache
file is reused across builds. The engine is a plain TensorRT plan; its manifest
(TensorRT version, GPU, profile, precision, source sha256) is written beside it.

Runner (:class:`TensorRTRunner`): checks the manifest against this machine before
TensorRT sees the plan, then runs batches through pinned host buffers and device
buffers allocated once for the profile's largest batch, from a small pool of
execution contexts; :meth:`TensorRTRunner.stream` double-buffers many batches.

TensorRT 10 and 11 differ (11 builds strongly typed networks only: no FP16/INT8
builder flags, no calibrators). Differences are found with ``hasattr`` on the
module, enum or object, never from the version string. ``tensorrt`` and
``pycuda`` are imported only when a build or a runner is asked for; the pure
logic (profiles, manifest decisions, batch splitting) runs without them.
"""

from sedeploy.backends.tensorrt.builder import (
    EngineBuildResult,
    ParserIssue,
    build_engine,
    build_engine_from_onnx,
    format_parser_errors,
)
from sedeploy.backends.tensorrt.compat import (
    DEFAULT_BATCH,
    EXTRA,
    OPT_LEVELS,
    BatchProfile,
    BatchProfileError,
    EngineBuildError,
    EngineMismatchError,
    EngineRunError,
    availability,
    check_implicit_int8_supported,
    compute_capability_tuple,
    engine_compatibility_problem,
    parse_batch_profile,
    require_available,
    resolve_batch_profile,
    version_tuple,
)
from sedeploy.backends.tensorrt.runner import Chunk, TensorRTRunner, join_outputs, plan_chunks

__all__ = [
    "DEFAULT_BATCH",
    "EXTRA",
    "OPT_LEVELS",
    "BatchProfile",
    "BatchProfileError",
    "Chunk",
    "EngineBuildError",
    "EngineBuildResult",
    "EngineMismatchError",
    "EngineRunError",
    "ParserIssue",
    "TensorRTRunner",
    "availability",
    "build_engine",
    "build_engine_from_onnx",
    "check_implicit_int8_supported",
    "compute_capability_tuple",
    "engine_compatibility_problem",
    "format_parser_errors",
    "join_outputs",
    "parse_batch_profile",
    "plan_chunks",
    "require_available",
    "resolve_batch_profile",
    "version_tuple",
]
