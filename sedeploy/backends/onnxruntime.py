"""ONNX Runtime backend: sessions with sensible defaults, and the optimized graph a build writes for fast starts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sedeploy.files import atomic_output
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def onnxruntime() -> Any:
    """The onnxruntime module, or a :class:`MissingDependencyError` naming the extra to install."""
    return import_optional("onnxruntime", "cpu")


def version() -> str:
    return str(onnxruntime().__version__)


def has_cuda() -> bool:
    """True when this onnxruntime build offers the CUDA execution provider (onnxruntime-gpu)."""
    return "CUDAExecutionProvider" in onnxruntime().get_available_providers()


def default_providers() -> list[str]:
    """CUDA first when this build has it (with CPU as ONNX Runtime's own fallback), else CPU."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda() else ["CPUExecutionProvider"]


def session_options(
    threads: int | None = None, optimization_level: str = "all", optimized_model_path: Path | None = None
) -> Any:
    """Session options: intra-op threads = physical-ish core count unless given, graph optimization level."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization_level]
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def create_session(
    model_path: str | os.PathLike[str],
    providers: list[str] | None = None,
    threads: int | None = None,
    optimization_level: str = "all",
) -> Any:
    """An InferenceSession on ``providers`` (default: :func:`default_providers`)."""
    ort = onnxruntime()
    return ort.InferenceSession(
        str(model_path),
        sess_options=session_options(threads, optimization_level),
        providers=providers or default_providers(),
    )


def write_optimized_model(
    model_path: Path, output_path: Path, providers: list[str] | None = None, optimization_level: str = "all"
) -> Path:
    """Save the graph as ONNX Runtime optimizes it for ``providers``, so later sessions start fast.

    At levels above ``basic`` the result is specific to this kind of device (it may
    hold CPU-layout ops); its manifest says for which.
    """
    ort = onnxruntime()
    with atomic_output(output_path) as temp_path:
        options = session_options(None, optimization_level, temp_path)
        options.log_severity_level = 3  # its warning that the graph is device-specific is what we intend
        ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers or default_providers()
        )
    logger.info("wrote ONNX Runtime-optimized graph %s", output_path)
    return output_path
