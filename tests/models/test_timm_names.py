"""timm's SE-ResNet names: each builds timm's network, loads timm's checkpoints as they are, reproduces the logits.

The references are ``tests/reference_nets.py``'s independent re-writes of timm's ``resnet.py`` and
``senet.py`` (timm itself cannot be imported beside the CPU torch build); their state dicts are in
timm's own layouts by construction.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from reference_nets import LEGACY_ARGS, TIMM_ARGS, randomize, timm_reference
from safetensors.torch import save_file
from torch import nn

import sedeploy
from sedeploy.cli import cli
from sedeploy.errors import ConfigError, WeightsMismatchError
from sedeploy.info import model_info
from sedeploy.models.checkpoint import Checkpoint, build_model, convert_layout, save_checkpoint
from sedeploy.models.complexity import estimate_complexity
from sedeploy.models.senet import SqueezeExcite
from sedeploy.models.timm_names import TIMM_MODELS, fitting_models

ALL_NAMES = sorted(TIMM_ARGS) + sorted(LEGACY_ARGS)
ISSUE_PARAMS_M = {
    # timm 1.0, 1000 classes, counted from timm's own model code with random weights (issue 23).
    "seresnet18": 11.78,
    "legacy_seresnet18": 11.78,
    "seresnet50": 28.09,
    "legacy_seresnet50": 28.09,
    "seresnext50_32x4d": 27.56,
    "seresnext26d_32x4d": 16.81,
    "seresnet50t": 28.10,
    "seresnet152d": 66.84,
    "seresnext101_32x8d": 93.57,
    "senet154": 115.09,
    "legacy_senet154": 115.09,
}
ISSUE_GMACS_224 = {
    # conv + linear multiply-accumulates at 224x224, same source.
    "seresnext26d_32x4d": 2.71,
    "seresnet50t": 4.30,
    "seresnet152d": 11.76,
    "seresnext101_32x8d": 16.42,
    "senet154": 20.69,
    "legacy_senet154": 20.69,
}
FAST_EXPORTS = ["seresnet18", "legacy_seresnet18"]
"""Exported through ONNX in the default run; the rest of ALL_NAMES with ``-m heavy`` (about 15 minutes on 2 cores,
SENet-154 alone 3), which the default run deselects to keep CI short."""


def _meta(build: object) -> nn.Module:
    with torch.device("meta"):
        return build()  # type: ignore[operator]


def _signature(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def _conv_linear_macs(model: nn.Module, size: int) -> tuple[int, int]:
    """Conv and linear MACs counted here, independently of sedeploy's estimator, and SE squeeze + scale."""
    counts = {"conv_linear": 0, "se": 0}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            counts["conv_linear"] += output[0].numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, nn.Linear):
            counts["conv_linear"] += output[0].numel() * module.in_features
        elif isinstance(module, SqueezeExcite):
            counts["se"] += 2 * inputs[0][0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.empty(1, 3, size, size, device="meta"))
    for handle in handles:
        handle.remove()
    return counts["conv_linear"], counts["se"]


def _save_reference(name: str, folder: pathlib.Path, num_classes: int = 10) -> tuple[nn.Module, pathlib.Path]:
    reference = randomize(timm_reference(name, num_classes=num_classes))
    # timm's legacy files predate BatchNorm's num_batches_tracked; timm's own files carry it.
    state_dict = {
        k: v.contiguous()
        for k, v in reference.state_dict().items()
        if name not in LEGACY_ARGS or not k.endswith("num_batches_tracked")
    }
    path = folder / f"{name}.safetensors"
    save_file(state_dict, path)
    return reference, path


def test_every_timm_name_is_registered_with_a_reference() -> None:
    assert set(TIMM_MODELS) == set(ALL_NAMES)
    assert set(ALL_NAMES) <= set(sedeploy.list_models())
    # sedeploy's own names are still there, beside timm's.
    assert {"se_resnet50", "se_resnext101_32x4d", "resnet50"} <= set(sedeploy.list_models())


@pytest.mark.parametrize("name", sorted(ISSUE_PARAMS_M))
def test_parameter_counts_are_timms(name: str) -> None:
    model = _meta(lambda: sedeploy.create_model(name))
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == ISSUE_PARAMS_M[name]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_tensors_match_the_reference_name_for_name(name: str) -> None:
    # On the meta device: names and shapes only, so even SE-ResNeXt-201 costs milliseconds.
    reference = _meta(lambda: timm_reference(name))
    raw = Checkpoint(path=pathlib.Path(name), sha256="", state_dict=dict(reference.state_dict()))
    converted = convert_layout(raw)
    assert converted.layout == TIMM_MODELS[name].layout
    model = _meta(lambda: sedeploy.create_model(name))
    assert _signature(converted.state_dict) == _signature(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert model.default_config.input_size[0] == 3


@pytest.mark.parametrize("name", sorted(ISSUE_GMACS_224))
def test_compute_at_224_is_timms(name: str) -> None:
    model = _meta(lambda: sedeploy.create_model(name, img_size=224))
    conv_linear, squeeze_scale = _conv_linear_macs(model, 224)
    assert conv_linear / 1e9 == pytest.approx(ISSUE_GMACS_224[name], abs=0.01)
    assert _conv_linear_macs(_meta(lambda: timm_reference(name)), 224)[0] == conv_linear
    # sedeploy's estimator: the same conv + linear count, plus the SE blocks' pooling and scaling.
    complexity = estimate_complexity(model)
    assert complexity.macs == conv_linear + squeeze_scale


def test_senet154_in_sedeploy_info_matches_the_paper() -> None:
    info = model_info("senet154")
    # The paper's SENet-154: 115.1 M parameters, 20.7 GFLOPs (multiply-adds) at 224.
    assert info.complexity.params / 1e6 == pytest.approx(115.1, abs=0.05)
    assert info.complexity.gmacs == pytest.approx(20.7, abs=0.05)
    assert info.plain_twin is None
    assert "senet154" in info.to_text()


def test_info_compares_a_timm_name_with_timms_plain_twin() -> None:
    info = model_info("seresnet50")
    assert info.plain_twin == "resnet50" and info.plain_complexity is not None
    # timm's plain resnet50 strides in the 3x3 conv: 4.09 GMACs, not the paper's 3.86.
    assert info.plain_complexity.gmacs == pytest.approx(4.09, abs=0.01)
    assert info.se_overhead is not None and 0.0 < info.se_overhead["macs_pct"] < 0.5
    assert model_info("seresnet50t").plain_twin == "resnet50t"


@pytest.mark.parametrize(
    ("name", "size", "crop", "interpolation"),
    [
        ("seresnet18", 224, 0.875, "bicubic"),
        ("seresnet50", 224, 0.95, "bicubic"),
        ("seresnet152d", 256, 0.95, "bicubic"),
        ("seresnextaa101d_32x8d", 288, 0.95, "bicubic"),
        ("legacy_seresnet50", 224, 0.875, "bilinear"),
        ("legacy_seresnet18", 224, 0.875, "bicubic"),
    ],
)
def test_preprocessing_is_timms_default(name: str, size: int, crop: float, interpolation: str) -> None:
    defaults = _meta(lambda: sedeploy.create_model(name)).default_config
    assert defaults.input_size == (3, size, size)
    assert defaults.crop_pct == crop and defaults.interpolation == interpolation


def test_a_timm_name_takes_no_architecture_options() -> None:
    with pytest.raises(
        ConfigError, match=r"seresnet50 does not take option\(s\) reduction.*in_chans, num_classes"
    ):
        sedeploy.create_model("seresnet50", reduction=8)


def _ort_logits(path: pathlib.Path, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": image})[0]


def _check_export(name: str, folder: pathlib.Path, size: int) -> None:
    reference, weights = _save_reference(name, folder)
    result = sedeploy.export_onnx(name, weights=weights, img_size=size, output=folder / "model.onnx")
    assert result.metadata.arch == name and result.metadata.num_classes == 10
    assert result.metadata.weights_layout == TIMM_MODELS[name].layout
    image = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(image)).numpy()
    got = _ort_logits(result.path, image)
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got - expected).max()) < 1e-4 * scale


@pytest.mark.parametrize("name", FAST_EXPORTS)
def test_export_reproduces_timms_logits(tmp_path: pathlib.Path, name: str) -> None:
    _check_export(name, tmp_path, size=32)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n not in FAST_EXPORTS])
def test_export_reproduces_timms_logits_for_every_name(tmp_path: pathlib.Path, name: str) -> None:
    _check_export(name, tmp_path, size=64)


@pytest.mark.parametrize(
    "name",
    [
        "seresnet34",
        "seresnext26d_32x4d",
        "seresnext26t_32x4d",
        "seresnet50t",
        "seresnetaa50d",
        "legacy_seresnet50",
        "legacy_seresnext26_32x4d",
    ],
)
def test_pytorch_logits_equal_the_reference(tmp_path: pathlib.Path, name: str) -> None:
    # The same check without ONNX, for more names in the default run.
    reference, weights = _save_reference(name, tmp_path)
    model, checkpoint = build_model(name, weights)
    assert checkpoint is not None and model.model_name == name
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "weights_of"),
    [
        ("seresnet18", "legacy_seresnet18"),  # legacy layout under a timm name
        ("legacy_seresnet18", "seresnet18"),  # timm layout under a legacy name
        ("seresnet50", "seresnet50t"),  # same layout, other stem and shortcuts
        ("legacy_seresnext50_32x4d", "legacy_seresnet50"),  # same layout, ungrouped 3x3 convs
        ("se_resnet18", "seresnet18"),  # sedeploy's own name: SE widths rounded to 8 by timm
    ],
)
def test_mismatched_weights_name_the_model_they_fit(
    tmp_path: pathlib.Path, name: str, weights_of: str
) -> None:
    _, weights = _save_reference(weights_of, tmp_path)

    with pytest.raises(WeightsMismatchError) as caught:
        build_model(name, weights)

    message = str(caught.value)
    assert "\n" not in message
    assert f"these weights look like {weights_of}; use that name" in message


def test_mismatched_layout_on_the_command_line_is_one_line_exit_1(tmp_path: pathlib.Path) -> None:
    _, weights = _save_reference("legacy_seresnet18", tmp_path)

    result = CliRunner().invoke(
        cli,
        [
            "export",
            "seresnet18",
            "--weights",
            str(weights),
            "--img-size",
            "32",
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )

    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "seresnet18 takes weights in timm's resnet.py layout" in lines[0]
    assert "these weights look like legacy_seresnet18" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


def test_parameter_free_differences_are_reported_as_several_fits() -> None:
    # The avg-pool anti-aliasing has no weights: a seresnext101d_32x8d file fits its aa twin as well.
    reference = _meta(lambda: timm_reference("seresnext101d_32x8d"))
    fits = fitting_models(dict(reference.state_dict()), "timm")
    assert fits == ["seresnext101d_32x8d", "seresnextaa101d_32x8d"]


def test_pretrainedmodels_basic_block_name_loads_the_legacy_network(tmp_path: pathlib.Path) -> None:
    # sedeploy's own se_resnet18 takes the legacy layout's options (ReLU before SE, legacy stem).
    reference, weights = _save_reference("legacy_seresnet18", tmp_path)
    model, checkpoint = build_model("se_resnet18", weights)
    assert checkpoint is not None and checkpoint.implied_options["block_style"] == "legacy"
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.heavy
def test_pretrainedmodels_senet154_resolves_to_the_legacy_model(tmp_path: pathlib.Path) -> None:
    reference, weights = _save_reference("legacy_senet154", tmp_path)
    model, _ = build_model("senet154", weights)
    assert model.model_name == "legacy_senet154"
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image), rtol=1e-5, atol=1e-5)
    # timm's own senet154 is another network (padded max-pool): the same weights give other logits.
    timm_model = sedeploy.create_model("senet154", num_classes=10).eval()
    timm_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(timm_model(image), reference(image), atol=1e-3)


def test_sedeploy_checkpoint_of_a_timm_name_round_trips(tmp_path: pathlib.Path) -> None:
    # A file sedeploy writes records the name; its tensors are in sedeploy's (= timm's) names.
    original = randomize(sedeploy.create_model("legacy_seresnet18", num_classes=3))
    path = save_checkpoint(original, tmp_path / "mine.safetensors")

    model, checkpoint = build_model("legacy_seresnet18", path)

    assert checkpoint is not None and checkpoint.layout == "sedeploy"
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(model(image), original(image))
