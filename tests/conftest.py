"""Shared test settings: GPU tests skip with a reason where CUDA is absent."""

from __future__ import annotations

import pytest
import torch


def _onnxruntime_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def pytest_configure(config: pytest.Config) -> None:
    """The suite's decoded-image cache is its own (inherited by the CLI subprocesses), not the user's."""
    import os
    import tempfile

    os.environ.setdefault("SEDEPLOY_CACHE_DIR", tempfile.mkdtemp(prefix="sedeploy-test-cache-"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; none is visible to torch here")
    skip_cuda_ort = pytest.mark.skip(
        reason="asserts the CPU onnxruntime build's defaults; onnxruntime-gpu is here"
    )
    cuda, cuda_ort = torch.cuda.is_available(), _onnxruntime_has_cuda()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
        if "cpu_onnxruntime" in item.keywords and cuda_ort:
            item.add_marker(skip_cuda_ort)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny SE-ResNet trained on scikit-learn's digits and exported to ONNX (shared by the precision tests)."""
    from digits import train_digits

    return train_digits(tmp_path_factory.mktemp("digits"))
