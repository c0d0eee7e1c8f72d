"""The complexity estimator against the SENet paper's tables, counted analytically (no 224x224 forward pass)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sedeploy
from sedeploy.models.complexity import estimate_complexity

# The paper's Table (224x224, 1000 classes, r=16): "GFLOPs" there are GMACs; params in millions.
PAPER_TABLE = {
    "resnet50": (3.86, 25.6),
    "se_resnet50": (3.87, 28.1),
    "resnet101": (7.58, 44.5),
    "se_resnet101": (7.60, 49.3),
    "resnet152": (11.30, 60.2),
    "se_resnet152": (11.32, 66.8),
    "resnext50_32x4d": (4.24, 25.0),
    "se_resnext50_32x4d": (4.25, 27.6),
    "resnext101_32x4d": (7.99, 44.2),
    "se_resnext101_32x4d": (8.00, 49.0),
}


def _meta_model(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return sedeploy.create_model(name, **options)


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_paper_table(name: str) -> None:
    paper_gmacs, paper_params_m = PAPER_TABLE[name]
    complexity = estimate_complexity(_meta_model(name))
    if name in ("resnet50", "se_resnet50"):
        assert complexity.gmacs == pytest.approx(paper_gmacs, abs=0.01)
    else:
        assert complexity.gmacs == pytest.approx(paper_gmacs, rel=0.003)
    assert complexity.params / 1e6 == pytest.approx(paper_params_m, abs=0.1)
    assert complexity.gflops == pytest.approx(2 * complexity.gmacs)


@pytest.mark.parametrize(
    "reduction,paper_params_m", [(2, 45.7), (4, 35.7), (8, 30.7), (16, 28.1), (32, 26.9)]
)
def test_paper_reduction_ratio_table(reduction: int, paper_params_m: float) -> None:
    complexity = estimate_complexity(_meta_model("se_resnet50", reduction=reduction))
    assert complexity.params / 1e6 == pytest.approx(paper_params_m, abs=0.15)


def test_se_overhead_on_resnet50_is_about_a_quarter_percent() -> None:
    se = estimate_complexity(_meta_model("se_resnet50"))
    plain = estimate_complexity(_meta_model("resnet50"))
    overhead_pct = 100 * (se.macs / plain.macs - 1)
    # The paper: 3.87 vs 3.86 GFLOPs, "0.26%". Counting squeeze and scale too gives 0.35%.
    assert 0.15 < overhead_pct < 0.40
    assert se.macs - plain.macs == se.se_macs
    assert plain.se_macs == 0 and plain.se_params == 0
    assert se.params - plain.params == se.se_params


def test_counts_match_a_hand_count_for_one_se_block() -> None:
    class OneBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, padding=1, bias=False)
            self.se = sedeploy.models.senet.SqueezeExcite(32, reduction=4)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.se(self.conv(x)).mean((2, 3)))

    complexity = estimate_complexity(OneBlock(), input_size=(3, 8, 8))
    conv = 32 * 8 * 8 * 3 * 9
    se = 2 * 32 * 8 * 8 + 32 * 8 + 8 * 32
    assert complexity.macs == conv + se + 32 * 10
    assert complexity.se_macs == se
    assert complexity.params == 32 * 3 * 9 + (32 * 8 + 8 + 8 * 32 + 32) + (32 * 10 + 10)


def test_grouped_convolution_counts_per_group() -> None:
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=32, bias=False))
    assert estimate_complexity(model, input_size=(64, 10, 10)).macs == 64 * 100 * 2 * 9


def test_compute_scales_with_input_area_and_stages_add_up() -> None:
    small = estimate_complexity(_meta_model("se_resnet50"), input_size=(3, 128, 128))
    large = estimate_complexity(_meta_model("se_resnet50"), input_size=(3, 256, 256))
    assert 3.95 < large.macs / small.macs <= 4.0
    assert sum(stage.macs for stage in large.stages) == large.macs
    assert sum(stage.params for stage in large.stages) == large.params
    assert [stage.name for stage in large.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert large.stages[-2].output_shape == (2048, 8, 8)


def test_real_model_is_left_untouched() -> None:
    model = sedeploy.create_model("se_resnet18", num_classes=3)
    before = model.fc.weight.detach().clone()
    estimate_complexity(model, input_size=(3, 64, 64))
    assert model.fc.weight.device.type == "cpu"
    assert torch.equal(model.fc.weight, before)


def test_default_input_size_comes_from_the_model_config() -> None:
    model = _meta_model("se_resnet18", in_chans=1, img_size=473, num_classes=4)
    complexity = estimate_complexity(model)
    assert complexity.input_size == (1, 473, 473)
    assert complexity.buffer_values == sum(
        m.running_mean.numel() * 2 for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )


def test_counts_in_eval_mode_so_1x1_feature_maps_work_and_mode_is_kept() -> None:
    model = sedeploy.create_model("se_preact_resnet", depths=(1, 1, 1, 1), widths=(16, 16, 32, 64)).train()
    complexity = estimate_complexity(model, input_size=(3, 32, 32))  # layer4 output is 1x1
    assert complexity.stages[-2].output_shape == (64, 1, 1)
    assert model.training
