"""The shipped model's exported ONNX (``models/digits_se_resnet/model.onnx``, what the torch-free CI job runs
on) is what exporting the shipped checkpoint gives today: the same metadata and the same logits. Runs in the
full environment (it exports with PyTorch); a stale file fails here, with the command that rebuilds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch", reason="exporting needs PyTorch (the full environment)")

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "digits_se_resnet"
REBUILD = (
    "sedeploy export se_preact_resnet --weights models/digits_se_resnet/model.safetensors --img-size 32 "
    "--labels models/digits_se_resnet/labels.txt -o models/digits_se_resnet/model.onnx"
)


def _logits(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0])


def test_the_shipped_onnx_is_a_fresh_export_of_the_shipped_checkpoint(tmp_path: Path) -> None:
    from PIL import Image

    from sedeploy.artifacts.metadata import read_metadata
    from sedeploy.data.transforms import preprocess
    from sedeploy.export import export_onnx

    fresh = tmp_path / "model.onnx"
    export_onnx(
        "se_preact_resnet",
        weights=SHIPPED / "model.safetensors",
        img_size=32,
        labels=SHIPPED / "labels.txt",
        output=fresh,
        check=False,
    )
    shipped_meta = {p.key: p.value for p in onnx.load(SHIPPED / "model.onnx").metadata_props}
    fresh_meta = {p.key: p.value for p in onnx.load(fresh).metadata_props}
    assert shipped_meta == fresh_meta, f"models/digits_se_resnet/model.onnx is stale; rebuild it: {REBUILD}"
    images = sorted(SHIPPED.joinpath("heldout").rglob("*.png"))[::15]
    preprocessing = read_metadata(fresh).preprocessing
    batch = np.stack([preprocess(Image.open(image).convert("L"), preprocessing) for image in images])
    np.testing.assert_allclose(
        _logits(SHIPPED / "model.onnx", batch), _logits(fresh, batch), rtol=0, atol=1e-4, err_msg=REBUILD
    )
