"""Reports name no machine's absolute paths: paths are written relative to the report's folder (issue 33)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sedeploy.demo import relative_to_folder


def test_absolute_paths_become_relative_to_the_report_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("demo-output")
    text = f"artifact {tmp_path}/demo-output/digits/model.onnx, reference {tmp_path}/models/m.safetensors"
    assert relative_to_folder(text, out) == "artifact digits/model.onnx, reference ../models/m.safetensors"
    report = {"rows": [{"artifact": str(tmp_path / "demo-output" / "a.onnx")}], "seconds": 1.5}
    assert relative_to_folder(report, out) == {"rows": [{"artifact": "a.onnx"}], "seconds": 1.5}
    assert str(tmp_path) not in str(relative_to_folder([text, report], out))
