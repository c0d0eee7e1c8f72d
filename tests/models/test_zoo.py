"""The model zoo: every architecture builds and runs, the SE block does what the paper says, bad options fail clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sedeploy
from sedeploy.errors import ConfigError
from sedeploy.models.senet import Bottleneck, SqueezeExcite

SE_MODELS = [
    "se_resnet18",
    "se_resnet34",
    "se_resnet50",
    "se_resnet101",
    "se_resnet152",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
]
PLAIN_MODELS = [name.removeprefix("se_") for name in SE_MODELS]


def test_list_models_holds_every_se_model_and_its_plain_twin() -> None:
    names = sedeploy.list_models()
    for name in SE_MODELS + PLAIN_MODELS:
        assert name in names


@pytest.mark.parametrize("name", SE_MODELS + PLAIN_MODELS)
def test_forward_pass_shapes(name: str) -> None:
    model = sedeploy.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    has_se = any(isinstance(m, SqueezeExcite) for m in model.modules())
    assert has_se == name.startswith("se_")


def test_grayscale_chair_classifier_473() -> None:
    model = sedeploy.create_model("se_resnet18", in_chans=1, num_classes=4).eval()
    assert model.default_config.input_size == (1, 224, 224)
    assert len(model.default_config.mean) == 1
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 473, 473))
    assert logits.shape == (1, 4)


def test_small_stem_keeps_resolution_for_tiny_inputs() -> None:
    model = sedeploy.create_model("se_resnet18", stem="small", num_classes=10).eval()
    features = model.forward_features(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 512, 4, 4)
    imagenet = sedeploy.create_model("se_resnet18", num_classes=10).eval()
    assert imagenet.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


@pytest.mark.parametrize("channels,reduction", [(64, 16), (256, 16), (128, 4), (512, 32)])
def test_se_block_is_input_times_per_channel_gate(channels: int, reduction: int) -> None:
    se = SqueezeExcite(channels, reduction).eval()
    x = torch.randn(3, channels, 5, 7)
    with torch.no_grad():
        out = se(x)
        gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    assert out.shape == x.shape
    ratio = out / x
    # One gate value per (image, channel), strictly inside (0, 1).
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert torch.allclose(ratio[:, :, 0, 0], gate[:, :, 0, 0], atol=1e-5)
    assert (gate > 0).all() and (gate < 1).all()
    # Different images get different gates: the gate depends on the input.
    assert not torch.allclose(gate[0], gate[1])


@pytest.mark.parametrize("bias", [True, False])
def test_se_block_weight_count(bias: bool) -> None:
    channels, reduction = 256, 16
    se = SqueezeExcite(channels, reduction, bias=bias)
    weights = se.fc1.weight.numel() + se.fc2.weight.numel()
    assert weights == 2 * channels * channels // reduction
    total = sum(p.numel() for p in se.parameters())
    assert total == weights + (channels // reduction + channels if bias else 0)


def test_se_sits_on_residual_branch_before_the_addition() -> None:
    model = sedeploy.create_model("se_resnet50", num_classes=3).eval()
    block = model.layer1[0]
    assert isinstance(block, Bottleneck)
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        expected = torch.relu(block.se(block.residual(x)) + block.downsample(x))
        assert torch.allclose(block(x), expected, atol=1e-6)


@pytest.mark.parametrize("variant", ["standard", "pre", "post", "identity"])
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_se_variants_and_squeeze_ops_build_and_run(variant: str, squeeze: str) -> None:
    model = sedeploy.create_model("se_resnet50", se_variant=variant, squeeze=squeeze, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    first_se = model.layer1[0].se
    # SE-PRE gates the unit's input (64 channels); the others gate the unit's output (256).
    assert first_se.channels == (64 if variant == "pre" else 256)


def test_variants_compute_different_functions() -> None:
    torch.manual_seed(1)
    reference = sedeploy.create_model("se_resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    outputs = {}
    for variant in ("standard", "post", "identity"):
        model = sedeploy.create_model("se_resnet18", se_variant=variant, num_classes=5).eval()
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            outputs[variant] = model(x)
    assert not torch.allclose(outputs["standard"], outputs["post"])
    assert not torch.allclose(outputs["standard"], outputs["identity"])


def test_stride_placement_moves_the_stride() -> None:
    v1 = sedeploy.create_model("se_resnet50")
    v15 = sedeploy.create_model("se_resnet50", stride_placement="v1.5")
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    # The paper's defaults: v1 for SE-ResNet, v1.5 for SE-ResNeXt.
    assert sedeploy.create_model("se_resnext50_32x4d").layer2[0].conv2.stride == (2, 2)


def test_legacy_stem_pools_with_ceil_mode() -> None:
    model = sedeploy.create_model("se_resnet50", stem="legacy")
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.maxpool.ceil_mode and model.maxpool.padding == 0


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("se_resnet5O", {}, "unknown architecture 'se_resnet5O'; choose one of:"),
        ("se_resnet50", {"reduction": 512}, "C/r < 1"),
        ("se_resnet50", {"reduction": 0}, "positive integer"),
        ("se_resnet50", {"in_chans": 0}, "in_chans must be an integer >= 1"),
        ("se_resnet50", {"num_classes": 0}, "num_classes must be"),
        ("se_resnet50", {"se_variant": "middle"}, "unknown se_variant 'middle'; valid values: standard, pre"),
        ("se_resnet50", {"squeeze": "median"}, "unknown squeeze 'median'; valid values: avg, max"),
        ("se_resnet50", {"gate": "softmax"}, "unknown gate 'softmax'"),
        ("se_resnet50", {"stride_placement": "v2"}, "unknown stride_placement 'v2'"),
        ("se_resnet50", {"stem": "spiral"}, "unknown stem 'spiral'"),
        ("se_resnet50", {"ratio": 8}, "unknown option(s) ratio"),
        ("resnet50", {"reduction": 8}, "SE options apply only to SE models"),
    ],
)
def test_bad_options_fail_at_construction_with_one_line(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        sedeploy.create_model(name, **options)
    message = str(excinfo.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as excinfo:
        sedeploy.create_model("senet155")
    for name in sedeploy.list_models():
        assert name in str(excinfo.value)


def test_created_model_records_how_it_was_built() -> None:
    model = sedeploy.create_model("se_resnext50_32x4d", in_chans=1, num_classes=4, img_size=(96, 128))
    assert model.model_name == "se_resnext50_32x4d"
    assert model.model_options == {"in_chans": 1, "num_classes": 4}
    assert model.default_config.input_size == (1, 96, 128)
    assert model.default_config.num_classes == 4
