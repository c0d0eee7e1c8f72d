"""Zoo part 2: the seed's chair classifier, the paper's ablation options and the SE-MobileNet, against their figures."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sedeploy
from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.models.complexity import estimate_complexity
from sedeploy.models.senet import SqueezeExcite


def _meta_model(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return sedeploy.create_model(name, **options)


def test_chair_classifier_matches_the_seed_keras_summary() -> None:
    result = CliRunner().invoke(cli, ["info", "chair_se_resnet", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["params"] == 9_771_200
    assert report["buffer_values"] == 6_272  # Keras: 9,777,472 total - 9,771,200 trainable
    assert report["input_size"] == [1, 473, 473]
    sizes = [stage["output_shape"][1] for stage in report["stages"] if len(stage["output_shape"]) == 3]
    assert sizes == [237, 119, 119, 60, 30, 15]
    assert report["stages"][-1]["output_shape"] == [4]


def test_chair_classifier_runs_at_its_native_size() -> None:
    model = sedeploy.create_model("chair_se_resnet").eval()
    assert model.default_config.labels == ("bench", "chair", "office_chair", "sofa")
    assert model.default_config.input_size == (1, 473, 473)
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 473, 473))
    assert logits.shape == (1, 4)
    se_blocks = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(se_blocks) == 6  # depths (2, 1, 1, 2)
    assert all(m.fc1.bias is None and m.fc2.bias is None for m in se_blocks)
    assert model.fc.bias is None


def test_chair_plain_twin_differs_only_by_se() -> None:
    se = estimate_complexity(_meta_model("chair_se_resnet"))
    plain = estimate_complexity(_meta_model("chair_resnet"))
    assert se.params - plain.params == se.se_params == 2 * (2 * 64**2 + 128**2 + 256**2 + 2 * 512**2) // 16


def test_preact_family_is_configurable() -> None:
    model = sedeploy.create_model("se_preact_resnet", depths=(1, 1), widths=(16, 32), width_multiplier=2)
    assert model.num_features == 64
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


# The paper's ablations on ResNet-50 at 224 (GMACs, params in millions).
@pytest.mark.parametrize(
    "options,paper_gmacs,paper_params_m",
    [
        ({"se_variant": "3x3"}, 3.86, 25.8),  # Table 15, SE_3x3
        ({"se_stages": (2,)}, None, 25.6),  # Table 13, SE_Stage_2 (conv2_x = layer1)
        ({"se_stages": (3,)}, None, 25.7),  # SE_Stage_3
        ({"se_stages": (4,)}, None, 26.4),  # SE_Stage_4
        ({"se_stages": (2, 3, 4, 5)}, 3.87, 28.1),  # SE_All
    ],
)
def test_ablation_figures(options: dict, paper_gmacs: float | None, paper_params_m: float) -> None:
    complexity = estimate_complexity(_meta_model("se_resnet50", **options))
    assert complexity.params / 1e6 == pytest.approx(paper_params_m, abs=0.1)
    if paper_gmacs is not None:
        assert complexity.gmacs == pytest.approx(paper_gmacs, rel=0.003)


def test_se_stages_put_se_only_where_asked() -> None:
    model = sedeploy.create_model("se_resnet50", se_stages=(3, 5))
    with_se = {name.split(".")[0] for name, m in model.named_modules() if isinstance(m, SqueezeExcite)}
    assert with_se == {"layer2", "layer4"}


def test_se_3x3_gates_the_bottleneck_width() -> None:
    model = sedeploy.create_model("se_resnet50", se_variant="3x3")
    assert model.layer1[0].se.channels == 64 and model.layer4[0].se.channels == 512


@pytest.mark.parametrize(
    "name,options",
    [
        ("se_resnet50", {"gate": "tanh"}),
        ("se_resnet50", {"gate": "relu"}),
        ("se_resnet50", {"se_variant": "3x3"}),
        ("se_resnet50", {"se_stages": (4,)}),
        ("se_resnext50_32x4d", {"se_variant": "3x3", "squeeze": "max"}),
        ("se_preact_resnet", {"depths": (1, 1, 1, 1)}),
        ("se_mobilenet_v1", {"width_multiplier": 0.25}),
    ],
)
def test_ablation_options_build_and_run_small(name: str, options: dict) -> None:
    model = sedeploy.create_model(name, num_classes=3, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_gate_choice_changes_the_gate() -> None:
    x = torch.randn(1, 32, 4, 4)
    tanh = SqueezeExcite(32, 4, gate="tanh")
    sigmoid = SqueezeExcite(32, 4, gate="sigmoid")
    sigmoid.load_state_dict(tanh.state_dict())
    with torch.no_grad():
        hidden = tanh.fc2(torch.relu(tanh.fc1(x.mean((2, 3), keepdim=True))))
        assert torch.allclose(tanh(x), x * torch.tanh(hidden), atol=1e-6)
        assert not torch.allclose(tanh(x), sigmoid(x))


@pytest.mark.parametrize(
    "name,paper_mmacs,paper_params_m", [("mobilenet_v1", 569, 4.2), ("se_mobilenet_v1", 572, 4.7)]
)
def test_mobilenet_paper_figures(name: str, paper_mmacs: float, paper_params_m: float) -> None:
    complexity = estimate_complexity(_meta_model(name))
    assert complexity.macs / 1e6 == pytest.approx(paper_mmacs, rel=0.01)
    assert complexity.params / 1e6 == pytest.approx(paper_params_m, abs=0.1)
    assert complexity.stages[-2].output_shape == (1024, 7, 7)


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("se_resnet50", {"gate": "swish"}, "valid values: sigmoid, tanh, relu"),
        ("se_resnet18", {"se_variant": "3x3"}, "bottleneck blocks only"),
        ("se_resnet50", {"se_stages": (1, 2)}, "se_stages (1, 2) is not a non-empty subset of (2, 3, 4, 5)"),
        ("se_resnet50", {"se_stages": ()}, "non-empty subset"),
        ("resnet50", {"se_stages": (2,)}, "SE options apply only to SE models"),
        ("se_preact_resnet", {"depths": (1, 1), "widths": (8,)}, "equally long"),
        ("se_preact_resnet", {"se_stages": (2,)}, "valid options:"),
        ("mobilenet_v1", {"reduction": 8}, "SE options apply only to SE models"),
        ("se_mobilenet_v1", {"width_multiplier": 0}, "width_multiplier must be in (0, 4]"),
    ],
)
def test_unknown_option_values_fail_with_one_line(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        sedeploy.create_model(name, **options)
    assert fragment in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_chair_classifier_exports_and_parity_checks_at_native_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sedeploy.artifacts.metadata import read_metadata
    from sedeploy.export import export_onnx

    result = export_onnx("chair_se_resnet", output=tmp_path / "chair.onnx", max_batch=2)
    assert [check.samples for check in result.parity] == [1, 2]
    metadata = read_metadata(result.path)
    assert metadata.input_size == (1, 473, 473) and metadata.grayscale
    assert metadata.labels == ("bench", "chair", "office_chair", "sofa")
    assert metadata.params == 9_771_200


@pytest.mark.parametrize(
    "name,options",
    [
        ("se_resnet50", {"gate": "tanh", "se_variant": "3x3"}),  # the 3x3 variant exists in bottlenecks only
        ("se_resnet18", {"se_stages": (4,), "squeeze": "max"}),  # SE options of any block: the small network
        ("se_resnet18", {"se_variant": "identity", "gate": "relu"}),
        ("se_mobilenet_v1", {"width_multiplier": 0.25}),
    ],
)
def test_ablation_options_export_at_a_small_size(name: str, options: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sedeploy.export import export_onnx

    result = export_onnx(
        name, img_size=32, num_classes=3, options=options, output=tmp_path / "m.onnx", max_batch=2
    )
    assert result.parity and all(check.top1_agreement == 1.0 for check in result.parity)
