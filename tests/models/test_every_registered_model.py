"""Every registered model, timm-style: a newly registered name is tested without anyone adding it to a list.

Each gets a forward pass at a small size and a complexity count that agrees with its parameters (one test, one
construction), and (``slow``) an export round-trip whose ONNX logits match PyTorch's. The round-trip runs by
default for one name per model family (``FAMILY_DEFAULT``: the family's cheapest SE network; timm's family in
``test_timm_names.py``) and is ``heavy`` (``pytest -m heavy``) for the other deep networks, timm's names and
names the default suite exports elsewhere; a new name outside those runs by default, and a new family fails
``test_every_family_has_a_default_round_trip`` until it names its default.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import sedeploy
from sedeploy.models.registry import get_entry
from sedeploy.models.senet import SqueezeExcite
from sedeploy.models.timm_names import TIMM_MODELS

SMALL = 64
"""Input side for the forward pass: big enough for five stride-2 stages, small enough for 2 cores."""
NAMES = sedeploy.list_models()


def _small(name: str) -> torch.nn.Module:
    return sedeploy.create_model(name, num_classes=5, img_size=SMALL).eval()


@pytest.mark.parametrize("name", NAMES)
def test_forward_pass_and_complexity_at_a_small_size(name: str) -> None:
    """One construction per name (the deepest take seconds to build): a forward pass, then the complexity count."""
    model = _small(name)
    channels = model.default_config.input_size[0]
    with torch.no_grad():
        logits = model(torch.randn(2, channels, SMALL, SMALL))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    complexity = sedeploy.estimate_complexity(model)
    assert complexity.params == sum(p.numel() for p in model.parameters())
    assert complexity.macs > 0
    twin = get_entry(name).defaults.plain_twin
    if twin is not None:  # an SE model's plain twin is the same network without SE
        assert any(isinstance(module, SqueezeExcite) for module in model.modules())
        assert not any(isinstance(module, SqueezeExcite) for module in _small(twin).modules())


DEEP = re.compile(r"(34|50|101|152|154|200|269)")
"""Depths whose export takes 8 s to minutes on 2 cores: ``heavy``, run with ``pytest -m heavy``. Their block
families are exported by default elsewhere (``test_export.py``'s family round trips: basic block, bottleneck,
SE-ResNeXt), so the default suite (CI's 15 minutes) keeps that coverage without a deep network per name."""
TIMM_NAMES = set(TIMM_MODELS)
"""timm's names: their export round-trips against timm's own network are in ``test_timm_names.py`` (``slow``)."""
FAMILY_DEFAULT = {
    "sedeploy.models.senet": "se_resnet18",
    "sedeploy.models.preact_resnet": "se_preact_resnet",
    "sedeploy.models.mobilenet": "se_mobilenet_v1",
}
"""Each family (the module that registers its constructor) exports once by default: its cheapest SE name as
registered (the exports elsewhere change its options or size), about 5 s of one core each (torch.export's
tracing, hardly the input size). The plain twins are cheaper still, but an SE network's export (squeeze, gate,
broadcast multiply) is what this package is for."""
FAMILY_EXPORTED_ELSEWHERE = {
    "sedeploy.models.timm_names": "test_timm_names.py's FAST_EXPORTS (seresnet18, legacy_seresnet18) by default, "
    "against timm's own network: a stronger check than PyTorch-vs-ONNX; a third export here would add 6 s",
}
"""Families whose default round trip is in another file, with where."""
EXPORTED_ELSEWHERE = {
    "resnet18": "test_export.py's plain-resnet family round trip",
    "chair_se_resnet": "test_zoo_part2.py's chair classifier at its native size",
    "chair_resnet": "its SE twin, chair_se_resnet (the same constructor without SE)",
    "mobilenet_v1": "its SE twin, se_mobilenet_v1 (the same constructor without SE)",
    "preact_resnet": "its SE twin, se_preact_resnet (the same constructor without SE)",
}
"""Names whose export the default suite already round-trips elsewhere: ``heavy`` here, with where instead."""


def _family(name: str) -> str:
    return get_entry(name).constructor.__module__


def test_every_family_has_a_default_round_trip() -> None:
    """A new family (a new module registering models) names the one of its names that exports by default."""
    assert {_family(name) for name in NAMES} == set(FAMILY_DEFAULT) | set(FAMILY_EXPORTED_ELSEWHERE)
    assert not set(FAMILY_DEFAULT) & set(FAMILY_EXPORTED_ELSEWHERE)
    assert all(_family(name) == family for family, name in FAMILY_DEFAULT.items())


def _heavy(name: str) -> bool:
    if name in FAMILY_DEFAULT.values():
        return False
    return bool(DEEP.search(name)) or name in TIMM_NAMES or name in EXPORTED_ELSEWHERE


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.heavy) if _heavy(name) else name for name in NAMES]
)
def test_export_round_trip(name: str, tmp_path: Path) -> None:
    model = _small(name)
    # Random init lets activations grow through 50+ blocks (logits in the hundreds) until rounding noise
    # dominates; halved BatchNorm scales keep them bounded, as a trained network's are.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(module.weight, 0.5)
    result = sedeploy.export_onnx(model, img_size=SMALL, output=tmp_path / "model.onnx")
    assert result.metadata.arch == name and all(check.passed(0.99999) for check in result.parity)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    channels = result.metadata.input_size[0]
    inputs = np.random.default_rng(0).standard_normal((3, channels, SMALL, SMALL)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    got = session.run(None, {result.metadata.input_name: inputs})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
