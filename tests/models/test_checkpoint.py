"""Checkpoint reading, layout conversion and strict loading: every layout gives the source's logits."""

from __future__ import annotations

import pathlib
from collections import OrderedDict

import pytest
import torch
from reference_nets import LegacySENet, SeedSEBlock, TimmBasicBlock, TimmBottleneck, TimmSEResNet, randomize
from safetensors.torch import save_file
from torch import nn

from sedeploy import create_model
from sedeploy.errors import BadInputError, ConfigError, UnsafeCheckpointError, WeightsMismatchError
from sedeploy.files import sha256_of_file
from sedeploy.models.checkpoint import (
    build_model,
    convert_layout,
    detect_layout,
    read_checkpoint,
    save_checkpoint,
)

IMAGE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, image: torch.Tensor = IMAGE) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(image)


def _assert_same_logits(converted: nn.Module, source: nn.Module) -> None:
    torch.testing.assert_close(_logits(converted), _logits(source), rtol=1e-5, atol=1e-5)


def _save_torch(obj: object, path: pathlib.Path) -> pathlib.Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("arch", "source"),
    [
        ("se_resnet50", lambda: TimmSEResNet(TimmBottleneck, (3, 4, 6, 3), num_classes=10)),
        (
            "se_resnext50_32x4d",
            lambda: TimmSEResNet(TimmBottleneck, (3, 4, 6, 3), num_classes=10, groups=32, base_width=4),
        ),
    ],
    ids=["timm-seresnet50", "timm-seresnext50_32x4d"],
)
def test_timm_layout_gives_source_logits(tmp_path, arch, source):
    reference = randomize(source())
    path = tmp_path / "timm.safetensors"
    save_file(reference.state_dict(), path)

    model, checkpoint = build_model(arch, path)

    assert checkpoint is not None and checkpoint.layout == "timm"
    assert checkpoint.implied_options["stride_placement"] == "v1.5"
    assert model.model_options["num_classes"] == 10
    _assert_same_logits(model, reference)


def test_timm_layout_is_not_sedeploy_v1(tmp_path):
    # The same tensors under sedeploy's default (v1) striding compute something else: the layout matters.
    reference = randomize(TimmSEResNet(TimmBottleneck, (3, 4, 6, 3), num_classes=10))
    path = _save_torch(reference.state_dict(), tmp_path / "bare.pt")

    as_sedeploy, _ = build_model("se_resnet50", path, layout="sedeploy")

    assert as_sedeploy.model_options.get("stride_placement") is None
    assert not torch.allclose(_logits(as_sedeploy), _logits(reference), atol=1e-3)


def test_timm_seresnet18_rounded_se_width_is_refused_with_shapes(tmp_path):
    # timm rounds SE widths up to multiples of 8 (layer1: 64/16 -> 8); sedeploy's r=16 gives 4.
    reference = randomize(TimmSEResNet(TimmBasicBlock, (2, 2, 2, 2), num_classes=10))
    path = _save_torch(reference.state_dict(), tmp_path / "seresnet18.pt")

    with pytest.raises(
        WeightsMismatchError, match=r"with other shapes \(layer1\.0\.se\.fc1\.weight \[8, 64, 1, 1\]"
    ):
        build_model("se_resnet18", path)


@pytest.mark.parametrize(
    ("arch", "groups", "stride_placement"),
    [("se_resnet50", 1, "v1"), ("se_resnext50_32x4d", 32, "v1.5")],
    ids=["legacy-seresnet50", "legacy-seresnext50_32x4d"],
)
def test_legacy_senet_layout_gives_source_logits(tmp_path, arch, groups, stride_placement):
    reference = randomize(LegacySENet((3, 4, 6, 3), groups=groups, num_classes=10))
    state_dict = reference.state_dict()
    assert "layer0.conv1.weight" in state_dict and "layer1.0.se_module.fc1.bias" in state_dict
    assert "last_linear.weight" in state_dict
    # The original SENet files predate BatchNorm's num_batches_tracked counters.
    legacy = OrderedDict((k, v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
    path = _save_torch(legacy, tmp_path / "legacy.pth")

    model, checkpoint = build_model(arch, path)

    assert checkpoint is not None and checkpoint.layout == "legacy"
    assert checkpoint.implied_options["stem"] == "legacy"
    assert checkpoint.implied_options["stride_placement"] == stride_placement
    _assert_same_logits(model, reference)
    # The stem option is what makes this exact: the padded max-pool computes other values.
    padded = create_model(arch, num_classes=10, stride_placement=stride_placement).eval()
    padded.load_state_dict(model.state_dict())
    assert not torch.allclose(_logits(padded), _logits(reference), atol=1e-3)


def test_legacy_basic_block_layout_loads_with_relu_before_se(tmp_path):
    # The original release's basic block applies a ReLU before SE: the layout implies block_style="legacy".
    reference = randomize(LegacySENet((2, 2, 2, 2), kind="basic", num_classes=10))
    path = _save_torch(reference.state_dict(), tmp_path / "legacy18.pth")

    model, checkpoint = build_model("se_resnet18", path)

    assert checkpoint is not None and checkpoint.implied_options["block_style"] == "legacy"
    _assert_same_logits(model, reference)


def _seed_linear_se_source() -> nn.Module:
    """se_resnet18 whose SE blocks are the seed's Linear SEBlock (no biases)."""
    source = create_model("se_resnet18", num_classes=10, se_bias=False)
    for module in list(source.modules()):
        if hasattr(module, "se") and module.se is not None:
            module.se = SeedSEBlock(module.se.channels)
    return randomize(source)


def test_linear_se_weights_are_reshaped_to_convs(tmp_path):
    reference = _seed_linear_se_source()
    assert reference.state_dict()["layer1.0.se.fc1.weight"].ndim == 2
    path = _save_torch({"model": reference.state_dict(), "epoch": 7}, tmp_path / "seed.pt")

    model, checkpoint = build_model("se_resnet18", path)

    assert checkpoint is not None and checkpoint.implied_options["se_bias"] is False
    assert model.state_dict()["layer1.0.se.fc1.weight"].shape == (4, 64, 1, 1)
    _assert_same_logits(model, reference)


@pytest.mark.parametrize("wrapper", ["bare", "state_dict", "model", "module-prefix", "wrapped-and-prefixed"])
def test_wrappers_and_module_prefixes(tmp_path, wrapper):
    reference = randomize(create_model("se_resnet18", num_classes=10, stem="small"))
    state_dict = reference.state_dict()
    prefixed = OrderedDict((f"module.{k}", v) for k, v in state_dict.items())
    saved = {
        "bare": state_dict,
        "state_dict": {"state_dict": state_dict, "epoch": 3, "best_acc": 0.87},
        "model": {"model": state_dict, "optimizer": {"lr": 0.1}},
        "module-prefix": prefixed,
        "wrapped-and-prefixed": {"state_dict": prefixed},
    }[wrapper]
    path = _save_torch(saved, tmp_path / "ckpt.pt")

    model, _ = build_model("se_resnet18", path, layout="sedeploy", stem="small")

    _assert_same_logits(model, reference)


def test_sedeploy_checkpoint_records_arch_and_options(tmp_path):
    reference = randomize(create_model("se_resnet50", num_classes=10, reduction=8))
    path = save_checkpoint(reference, tmp_path / "mine.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    raw = read_checkpoint(path)
    assert detect_layout(raw) == "sedeploy"
    assert raw.arch == "se_resnet50" and raw.recorded_options == {"num_classes": 10, "reduction": 8}
    assert raw.sha256 == sha256_of_file(path)

    # No options given: the record rebuilds the same model, v1 striding included.
    model, checkpoint = build_model("se_resnet50", path)
    assert checkpoint is not None and checkpoint.layout == "sedeploy"
    _assert_same_logits(model, reference)


def test_sedeploy_record_in_a_torch_checkpoint(tmp_path):
    reference = randomize(create_model("se_resnet18", num_classes=5, stem="small"))
    record = {"arch": "se_resnet18", "options": {"num_classes": 5, "stem": "small"}}
    path = _save_torch({"state_dict": reference.state_dict(), "sedeploy": record}, tmp_path / "mine.pt")

    model, checkpoint = build_model("se_resnet18", path)

    assert checkpoint is not None and checkpoint.layout == "sedeploy"
    _assert_same_logits(model, reference)


def test_sedeploy_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_checkpoint(create_model("se_resnet18", num_classes=4), tmp_path / "r18.safetensors")

    with pytest.raises(WeightsMismatchError, match="holds se_resnet18 weights, not se_resnet34"):
        build_model("se_resnet34", path)


def test_bare_checkpoint_of_another_architecture_lists_counts_and_names(tmp_path):
    path = _save_torch(create_model("se_resnet34", num_classes=4).state_dict(), tmp_path / "r34.pt")

    with pytest.raises(WeightsMismatchError) as caught:
        build_model("se_resnet18", path)

    message = str(caught.value)
    assert "\n" not in message
    assert "unexpected (layer1.2." in message and "r34.pt" in message
    assert message.count(",") < 30  # the first few names, not all of them


def test_missing_and_misshapen_tensors_are_one_error(tmp_path):
    state_dict = create_model("se_resnet18", num_classes=4).state_dict()
    del state_dict["layer4.1.conv2.weight"]
    state_dict["layer1.0.se.fc2.bias"] = torch.zeros(65)
    path = _save_torch(state_dict, tmp_path / "broken.pt")

    with pytest.raises(
        WeightsMismatchError, match=r"1 missing \(layer4\.1\.conv2\.weight\).*1 with other shapes"
    ):
        build_model("se_resnet18", path, layout="sedeploy")


def test_options_contradicting_the_layout_fail(tmp_path):
    reference = randomize(TimmSEResNet(TimmBottleneck, (3, 4, 6, 3), num_classes=10))
    path = _save_torch(reference.state_dict(), tmp_path / "timm.pt")

    with pytest.raises(ConfigError, match="stride_placement='v1' contradicts"):
        build_model("se_resnet50", path, stride_placement="v1")
    with pytest.raises(ConfigError, match="num_classes=4 contradicts"):
        build_model("se_resnet50", path, num_classes=4)


class _Payload:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_needing_arbitrary_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    state_dict = create_model("se_resnet18", num_classes=4, stem="small").state_dict()
    path = _save_torch({"state_dict": state_dict, "hook": _Payload(marker)}, tmp_path / "unsafe.pt")

    with pytest.raises(UnsafeCheckpointError) as caught:
        read_checkpoint(path)

    message = str(caught.value)
    assert "execute code" in message and "safetensors" in message and "\n" not in message
    assert "(it needs " in message  # names the global it would have had to import
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_truncated_checkpoint_is_one_clear_error(tmp_path, fmt):
    state_dict = create_model("se_resnet18", num_classes=4, stem="small").state_dict()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(state_dict, path)
    else:
        torch.save(state_dict, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(BadInputError, match="truncated") as caught:
        read_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_not_a_state_dict_is_refused(tmp_path):
    path = _save_torch({"epoch": 3, "notes": "no tensors here"}, tmp_path / "empty.pt")

    with pytest.raises(BadInputError, match="no state dict of tensors"):
        read_checkpoint(path)


def test_unknown_layout_is_a_config_error(tmp_path):
    path = _save_torch(create_model("resnet18").state_dict(), tmp_path / "r.pt")

    with pytest.raises(ConfigError, match="unknown layout 'keras'"):
        convert_layout(read_checkpoint(path), "keras")
