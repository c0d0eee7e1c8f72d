"""Cross-layer equalization on one small model per family of the zoo: function-preserving, and what it pairs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import sedeploy
from sedeploy.artifacts.module_names import read_module_names
from sedeploy.errors import SedeployError
from sedeploy.export import export_onnx
from sedeploy.precision.equalize import (
    EQUALIZATION_KEY,
    check_function_preserved,
    equalizable_groups,
    equalization_record,
    equalize,
)

FAMILIES = {
    "se_resnet18": {},  # the smallest SE-ResNet name (post-activation basic blocks)
    "se_mobilenet_v1": {"width_multiplier": 0.25},  # depthwise -> pointwise chains with SE between
}
IMG_SIZE = 32


def _live_random(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Random BatchNorm scales and shifts, then running statistics from one batch: a random network whose
    activations neither vanish nor blow up (kaiming-initialized deep nets at 32 px go to 1e-20), with channels
    of different widths, so equalization has something to do and the logits something to preserve."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data = torch.rand(module.num_features, generator=generator) * 2 + 0.2
            module.bias.data = torch.randn(module.num_features, generator=generator) * 0.2
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(16, model.default_config.input_size[0], size, size, generator=generator))
    return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, onnx.ModelProto]:
    """(zoo name, its export): a random but live network of that family at 32x32."""
    name = request.param
    model = sedeploy.create_model(name, img_size=IMG_SIZE, num_classes=5, **FAMILIES[name])
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    export_onnx(_live_random(model, IMG_SIZE), img_size=IMG_SIZE, check=False, output=path)
    return name, onnx.load(str(path))


def _images(model: onnx.ModelProto, count: int = 8) -> np.ndarray:
    channels, height, width = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    return np.random.default_rng(0).standard_normal((count, channels, height, width)).astype(np.float32)


def test_equalization_preserves_the_function_of_each_family(family: tuple[str, onnx.ModelProto]) -> None:
    _, family_onnx = family
    images = _images(family_onnx)
    equalized, record = equalize(family_onnx)
    change = check_function_preserved(family_onnx, equalized, images)
    names = read_module_names(family_onnx)
    print(f"{record.summary()} in {record.passes} pass(es); largest relative logit change {change:.1e}")
    assert change <= 1e-4
    assert record.pairs >= 4
    for group in record.groups:
        assert group.smallest_scale > 0 and np.isfinite(group.largest_scale)
        assert group.producer_module == names[group.producer]  # the report speaks in module names
    # The weights really moved: equalization that changes nothing would pass the parity check too.
    before = {init.name: onnx.numpy_helper.to_array(init) for init in family_onnx.graph.initializer}
    moved = [
        init.name
        for init in equalized.graph.initializer
        if init.name in before and not np.array_equal(before[init.name], onnx.numpy_helper.to_array(init))
    ]
    assert len(moved) >= record.pairs
    assert equalization_record(equalized) == [(g.producer, list(g.consumers)) for g in record.groups]
    assert equalization_record(family_onnx) is None
    # The logits the network gives are not trivially constant (the check above compares something real).
    session_logits = _logits(family_onnx, images)
    assert np.ptp(session_logits, axis=0).max() > 1e-3


def _logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0]


def test_equalization_pairs_what_the_structure_allows(family: tuple[str, onnx.ModelProto]) -> None:
    name, family_onnx = family
    names = read_module_names(family_onnx)
    groups = {
        names[producer]: sorted(names[c] for c in consumers)
        for producer, consumers in equalizable_groups(family_onnx).items()
    }
    _, record = equalize(family_onnx)
    skipped = {names.get(node, node): reason for node, reason in record.skipped.items()}
    if name == "se_mobilenet_v1":
        # pointwise -> ReLU -> SE gate Mul -> next depthwise; the SE squeeze's first FC compensates as well
        assert groups["layer1.0.pointwise.0"] == ["layer1.0.se.fc1", "layer2.0.depthwise.0"]
        assert groups["layer1.0.depthwise.0"] == ["layer1.0.pointwise.0"]
        assert "Sigmoid" in skipped["layer1.0.se.fc2"]
    else:
        assert groups["layer1.0.conv1"] == ["layer1.0.conv2"]
        assert groups["layer1.0.se.fc1"] == ["layer1.0.se.fc2"]
        # A residual stream cannot be rescaled one branch at a time.
        assert "Add" in skipped["layer1.0.conv2"]
        assert "layer1.0.conv2" not in groups


def test_pre_activation_family_and_the_parity_gate(shipped_digits) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(str(shipped_digits.onnx_path))
    equalized, record = equalize(model)
    names = read_module_names(model)
    assert {names[g.producer] for g in record.groups} >= {
        "layer1.0.conv1",
        "layer3.1.conv1",
        "layer3.1.se.fc1",
    }
    assert check_function_preserved(model, equalized, shipped_digits.heldout[:64]) <= 1e-4
    assert any(prop.key == EQUALIZATION_KEY for prop in equalized.metadata_props)
    # The gate refuses a rewrite that changes the function.
    broken = onnx.ModelProto()
    broken.CopyFrom(equalized)
    weight = next(init for init in broken.graph.initializer if init.name == "layer2.0.conv2.weight")
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, weight.name))
    with pytest.raises(SedeployError, match="changed the FP32 logits"):
        check_function_preserved(model, broken, shipped_digits.heldout[:16])


def test_equalizing_twice_changes_nothing_more(shipped_digits) -> None:  # type: ignore[no-untyped-def]
    once, _ = equalize(onnx.load(str(shipped_digits.onnx_path)))
    _, record = equalize(once)
    assert all(abs(g.largest_scale - 1) < 1e-2 and abs(g.smallest_scale - 1) < 1e-2 for g in record.groups)
