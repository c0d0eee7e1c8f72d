"""Quantization-aware fine-tuning on the digits model: placement as PTQ's, scales learned and exported as they are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from sedeploy.backends.onnxruntime import create_session
from sedeploy.build import build_engine
from sedeploy.building import BuildOptions
from sedeploy.measure.verification import verify
from sedeploy.precision.calibration import calibrate, images_sha256
from sedeploy.precision.lint import lint_tensorrt_qdq
from sedeploy.precision.placement import placement_of, recipe_placement
from sedeploy.precision.recipe import Int8Recipe
from sedeploy.training.loop import TrainConfig
from sedeploy.training.qat import (
    activation_scales,
    build_qat_graph,
    export_qat,
    read_qat_checkpoint,
    train_qat,
)


def _ranges(trained_digits, recipe: Int8Recipe):  # type: ignore[no-untyped-def]
    images = trained_digits.test_images[:64]
    return calibrate(trained_digits.onnx_path, images, "input", recipe, images_sha256(images))


@pytest.mark.parametrize(
    "recipe",
    [
        Int8Recipe(flavour="cpu"),
        Int8Recipe(flavour="tensorrt"),
        Int8Recipe(flavour="tensorrt", every_tensor_int8=True),
    ],
    ids=["cpu", "tensorrt", "tensorrt-every-tensor"],
)
def test_the_qat_quantizers_sit_where_the_ptq_recipe_puts_qdq(trained_digits, tmp_path, recipe) -> None:  # type: ignore[no-untyped-def]
    fp32 = onnx.load(str(trained_digits.onnx_path))
    model, placement = build_qat_graph(fp32, recipe, _ranges(trained_digits, recipe))
    assert placement == recipe_placement(trained_digits.onnx_path, recipe)
    assert sorted(model.tensor_names()) == sorted(placement.activations)
    assert placement.quantized_nodes  # not vacuous
    if recipe.every_tensor_int8:  # the head and the SE gate are quantized too
        plain = recipe_placement(trained_digits.onnx_path, Int8Recipe(flavour="tensorrt"))
        assert set(plain.quantized_nodes) < set(placement.quantized_nodes)
        assert {n.name for n in fp32.graph.node if n.op_type in ("Gemm", "Sigmoid")} <= set(
            placement.quantized_nodes
        )


def test_the_untrained_qat_graph_is_the_ptq_file(trained_digits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Before fine-tuning, the fake-quantized graph gives the post-training INT8 file's logits (cpu flavour)."""
    from sedeploy.precision.int8 import quantize_int8

    recipe = Int8Recipe(flavour="cpu")
    ranges = _ranges(trained_digits, recipe)
    quantize_int8(trained_digits.onnx_path, tmp_path / "ptq.onnx", ranges, recipe)
    model, _ = build_qat_graph(onnx.load(str(trained_digits.onnx_path)), recipe, ranges)
    images = trained_digits.test_images[:32]
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(images)).numpy()
    session = create_session(tmp_path / "ptq.onnx", optimization_level="disable")
    theirs = session.run(None, {"input": images})[0]
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.999
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.95


@pytest.mark.heavy  # 1-2 min of training on 2 cores: over the round's per-issue budget for the default suite
@pytest.mark.parametrize("flavour", ["cpu", "tensorrt"])
def test_one_epoch_of_qat_exports_the_learned_scales(trained_digits, tmp_path, flavour) -> None:  # type: ignore[no-untyped-def]
    recipe = Int8Recipe(flavour=flavour)
    config = TrainConfig(
        arch="se_preact_resnet", epochs=1, lr=1e-4, batch_size=64, augment=False, device="cpu"
    )
    result = train_qat(trained_digits.onnx_path, trained_digits.train_dir, tmp_path / "qat", recipe, config)
    assert result.checkpoint.is_file() and result.record.is_file()
    record = result.record.read_text()
    assert '"qat": true' in record and f'"flavour": "{flavour}"' in record
    _, learned = read_qat_checkpoint(result.checkpoint)
    float_twin = tmp_path / "model.qat-fp32.onnx"
    exported = export_qat(tmp_path / "qat", tmp_path / f"model.int8-{flavour}.qat.onnx", float_twin)
    qdq = onnx.load(str(exported))
    written = activation_scales(qdq)
    assert set(written) == set(learned)
    tolerance = 1e-3 if flavour == "tensorrt" else 1e-7  # the tensorrt file is FP16-typed, scales too
    for tensor, (scale, zero_point) in learned.items():
        assert written[tensor][0] == pytest.approx(scale, rel=tolerance), tensor
        assert written[tensor][1] == zero_point
    assert placement_of(qdq) == recipe_placement(trained_digits.onnx_path, recipe)
    if flavour == "tensorrt":
        assert lint_tensorrt_qdq(qdq, high_precision="fp16") == []
    session = create_session(exported, optimization_level="disable" if flavour == "tensorrt" else "all")
    logits = session.run(None, {"input": trained_digits.test_images})[0]
    accuracy = float((logits.argmax(1) == trained_digits.test_labels).mean())
    assert accuracy >= trained_digits.torch_accuracy - 0.02
    if flavour == "tensorrt":
        return  # its INT8 runs on TensorRT only: ONNX Runtime's audit reads 0% int8 and refuses the build
    # built INT8 as it is (no calibration folder, gated on its float twin) and verified against that twin
    built = build_engine(exported, BuildOptions(precision="int8", backend="onnxruntime"))
    assert built.manifests[-1].recipe["qat"] is True
    report = verify(built.artifacts[-1], float_twin, data=trained_digits.test_dir)
    assert report.passed, report.failures


def test_train_qat_needs_a_checkpoint_and_no_arch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from sedeploy.cli import cli

    result = CliRunner().invoke(cli, ["train", "--qat", str(tmp_path)])
    assert result.exit_code == 2 and "--qat needs --weights" in result.output
    result = CliRunner().invoke(cli, ["train", str(tmp_path)])
    assert result.exit_code == 2 and "--arch" in result.output


def test_every_tensor_int8_keeps_nothing_float() -> None:
    from sedeploy.errors import ConfigError

    with pytest.raises(ConfigError, match="every_tensor_int8 keeps no layer in float"):
        Int8Recipe(every_tensor_int8=True, float_nodes=("layer1.0",))
    assert Int8Recipe(flavour="tensorrt", every_tensor_int8=True).se_quantized
