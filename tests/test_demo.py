"""``sedeploy demo --quick`` end to end, through the command line, with the figures its report promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("demo")
    out = work / "out"
    # run from an unrelated folder: the demo finds the example in the clone sedeploy runs from
    completed = subprocess.run(
        [sys.executable, "-m", "sedeploy", "demo", "--quick", "--out", str(out), "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text(encoding="utf-8")), completed


def _rows(report: dict, precision: str, flavour: str | None = None) -> list[dict]:
    return [
        row
        for row in report["rows"]
        if row["model"] == "digits_se_resnet"
        and row["backend"] != "torch"
        and row["precision"] == precision
        and row["flavour"] == flavour
    ]


@pytest.mark.slow
def test_quick_demo_figures(quick_demo: tuple[Path, dict, subprocess.CompletedProcess]) -> None:
    _, report, _ = quick_demo
    assert report["format"] == "sedeploy-demo" and report["quick"] is True and report["passed"] is True
    fp32 = _rows(report, "fp32")
    assert fp32 and all(row["accuracy"] >= 0.985 for row in fp32)
    fp16 = _rows(report, "fp16")
    assert fp16 and all(row["top1_agreement"] >= 0.999 for row in fp16)
    for flavour in ("tensorrt", "cpu"):
        int8 = _rows(report, "int8", flavour)
        assert int8, f"no int8-{flavour} artifact in the report"
        assert all(row["accuracy_drop"] <= 0.5 for row in int8)
    for row in [*fp32, *fp16, *_rows(report, "int8", "tensorrt"), *_rows(report, "int8", "cpu")]:
        assert row["verified"] is True
        assert row["images_per_s"]["1"] > 0 and row["images_per_s"]["8"] > 0
        assert row["gflops"] > 0 and row["size_mb"] > 0
    # every verification ran on all held-out images, and the quick run skips SE-ResNet-50
    assert all(verification["samples"] == 449 for verification in report["verify"])
    assert not [row for row in report["rows"] if row["speed_only"]]


@pytest.mark.slow
def test_quick_demo_files(quick_demo: tuple[Path, dict, subprocess.CompletedProcess]) -> None:
    out, report, completed = quick_demo
    assert json.loads(completed.stdout) == report  # --json prints what report.json holds
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("# sedeploy demo (quick run)")
    summary = markdown.split("## Verification")[0]
    table = [line for line in summary.splitlines() if line.startswith("| digits_se_resnet.")]
    assert len(table) == len(report["rows"]) - 1  # every artifact but the PyTorch reference row
    for row in report["rows"]:
        if row["backend"] != "torch":
            assert (out / "artifacts" / row["artifact"]).is_file()
            assert (out / "artifacts" / (row["artifact"] + ".manifest.json")).is_file()
    for path in report["files"]:
        assert (out / path).is_file() and not Path(path).is_absolute()  # relative to the output folder
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert any("plots skipped" in note for note in report["notes"])
    else:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
