"""Function-preserving outlier variants of an exported pre-activation SE-ResNet (the INT8 failure mode in FACTS.md).

Each rewrite leaves the FP32 network's function unchanged (same logits up to rounding) and gives a few
activation channels a range ``k`` times wider than the rest, as trained networks sometimes have:

- :func:`outlier_pairs`: BN -> ReLU -> conv paths (the BatchNorm folded into the convolution before it):
  output channels of ``<block>.conv1`` times ``k``, the matching input channels of ``<block>.conv2`` divided by
  ``k``. Cross-layer equalization undoes exactly this.
- :func:`residual_outlier`: a channel of the residual stream of a stage, from its projection block on:
  every writer (shortcut and branch convolutions) times ``k``, every reader compensates (the SE squeeze's
  first FC, each BatchNorm that reads the stream). No conv -> ReLU -> conv pair reaches it, so equalization
  cannot; keeping the layers that quantize it in float can.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sedeploy.artifacts.module_names import read_module_names

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED = REPOSITORY / "models" / "digits_se_resnet"
PAIR_BLOCKS = ("layer1.1", "layer2.0", "layer3.1")
"""Blocks whose conv1 -> conv2 path gets outlier channels in the tests (three of the six)."""
PAIR_CHANNELS = (3, 7, 11)
RESIDUAL_BLOCKS = ("layer3.0", "layer3.1")
RESIDUAL_CHANNELS = (3, 50, 77)


@functools.lru_cache(maxsize=1)
def shipped_digits_onnx() -> Path:
    """The shipped checkpoint exported once per test process (test modules outside ``tests/precision`` copy it:
    builds write beside their source)."""
    from sedeploy.export import export_onnx

    folder = Path(tempfile.mkdtemp(prefix="sedeploy-shipped-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "digits.onnx"
    export_onnx(weights=SHIPPED / "model.safetensors", output=path, check=False)
    return path


def write_variant(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def module_node(model: onnx.ModelProto, module: str) -> onnx.NodeProto:
    """The first node recorded under PyTorch module ``module``."""
    names = read_module_names(model)
    return next(node for node in model.graph.node if names.get(node.name) == module)


class _Weights:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.initializers = {init.name: init for init in self.model.graph.initializer}

    def get(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name]).astype(np.float64)

    def put(self, name: str, value: np.ndarray) -> None:
        self.initializers[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def scale_rows(self, module: str, channels: Sequence[int], factor: float) -> None:
        node = module_node(self.model, module)
        for name in node.input[1:3]:
            if name:
                value = self.get(name)
                value[list(channels)] *= factor
                self.put(name, value)

    def scale_columns(self, module: str, channels: Sequence[int], factor: float) -> None:
        node = module_node(self.model, module)
        value = self.get(node.input[1])
        value[:, list(channels)] *= factor
        self.put(node.input[1], value)

    def widen_batchnorm_input(self, module: str, channels: Sequence[int], k: float) -> None:
        """A BatchNorm whose input channels are ``k`` times wider gives the same output: mean times k,
        variance times k^2, and the scale corrected for epsilon."""
        node = module_node(self.model, module)
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, variance = (self.get(name) for name in node.input[1:5])
        c = list(channels)
        scale[c] *= np.sqrt(k * k * variance[c] + epsilon) / (k * np.sqrt(variance[c] + epsilon))
        mean[c] *= k
        variance[c] *= k * k
        for name, value in zip(node.input[1:5], (scale, bias, mean, variance), strict=True):
            self.put(name, value)


def outlier_pairs(
    model: onnx.ModelProto, blocks: Sequence[str], channels: Sequence[int], k: float
) -> onnx.ModelProto:
    """Channels of ``<block>.conv1``'s output ``k`` times wider, ``<block>.conv2`` compensating, for each block."""
    weights = _Weights(model)
    for block in blocks:
        weights.scale_rows(f"{block}.conv1", channels, k)
        weights.scale_columns(f"{block}.conv2", channels, 1.0 / k)
    return weights.model


def residual_outlier(
    model: onnx.ModelProto, blocks: Sequence[str], channels: Sequence[int], k: float, final_norm: str = "norm"
) -> onnx.ModelProto:
    """Channels of the residual stream ``k`` times wider from ``blocks[0]`` (a projection block) to the end.

    ``blocks`` are the stage's blocks in order, the last stage of the network (``final_norm`` reads its output).
    """
    weights = _Weights(model)
    for index, block in enumerate(blocks):
        if index == 0:
            weights.scale_rows(f"{block}.shortcut", channels, k)
        else:
            weights.widen_batchnorm_input(f"{block}.bn1", channels, k)
        weights.scale_rows(f"{block}.conv2", channels, k)
        weights.scale_columns(f"{block}.se.fc1", channels, 1.0 / k)
    weights.widen_batchnorm_input(final_norm, channels, k)
    return weights.model
