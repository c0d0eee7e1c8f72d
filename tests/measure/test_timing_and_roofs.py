"""The measuring wing's timing statistics and roofs: latency figures from synthetic timings, GFLOP/s and the
share of a roof, roof probes planned and labelled from the matrix units, the GPU peak table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sedeploy import host
from sedeploy.measure.bench import BenchReport, BenchRow
from sedeploy.measure.roofs import cpu_roof_probes, gemm_probe, gpu_peak_gflops, roof_kind, torch_gemm_probe
from sedeploy.measure.timing import LatencyStats

FIXTURES = Path(__file__).parents[1] / "fixtures" / "cpuinfo"


def _units(name: str) -> host.MatrixUnits:
    return host.parse_matrix_units((FIXTURES / name).read_text(encoding="utf-8"))


def test_latency_statistics_on_synthetic_timings() -> None:
    seconds = [0.010] * 90 + [0.020] * 9 + [0.100]  # 100 calls
    stats = LatencyStats.from_times(seconds, batch=4)
    assert stats.calls == 100
    assert stats.p50_ms == pytest.approx(10.0)
    assert stats.p90_ms == pytest.approx(np.percentile(np.array(seconds) * 1e3, 90))
    assert 20.0 <= stats.p99_ms <= 100.0
    assert stats.mean_ms == pytest.approx(1e3 * sum(seconds) / 100)
    assert stats.images_per_s == pytest.approx(4 * 100 / sum(seconds))
    assert stats.median_images_per_s == pytest.approx(4 / 0.010)  # the one slow call does not move it


def test_gflops_arithmetic_and_roof_share() -> None:
    stats = LatencyStats.from_times([0.5, 0.5], batch=10)  # 20 images/s
    row = BenchRow("m.onnx", "m.onnx", "fp32", "onnxruntime", stats, gmacs_per_image=1.5, roof_gflops=120.0)
    assert row.gflops_per_image == 3.0
    assert row.achieved_gflops == pytest.approx(60.0)
    assert row.roof_share == pytest.approx(0.5)
    suspect = BenchRow("m.onnx", "m.onnx", "fp32", "onnxruntime", stats, 1.5, roof_gflops=50.0)
    assert suspect.to_dict()["roof_share_suspect"] is True
    assert row.to_dict()["roof_share_suspect"] is False


def test_a_share_above_the_roof_is_a_probe_problem_never_a_figure() -> None:
    stats = LatencyStats.from_times([0.5, 0.5], batch=10)  # 20 images/s x 3 GFLOPs = 60 GFLOP/s
    above = BenchRow(
        "q.onnx", "q.onnx", "int8", "onnxruntime", stats, 1.5, roof_gflops=50.0, roof_kind="int8"
    )
    assert above.measured_share == pytest.approx(1.2)
    assert above.roof_share is None  # what every consumer (demo, perf table) prints from
    assert above.roof_problem is not None and "above the int8 roof probe's 50" in above.roof_problem
    data = above.to_dict()
    assert data["roof_share"] is None and data["roof_problem"] == above.roof_problem
    report = BenchReport((above,), {"int8": 50.0}, host.describe_machine(), probe_labels={"int8": "MLAS, X"})
    markdown = report.to_markdown()
    row_line = next(line for line in markdown.splitlines() if line.startswith("| q.onnx"))
    assert "probe problem" in row_line and "120" not in row_line and "%" not in row_line
    assert f"- probe problem: {above.roof_problem}" in markdown
    assert "int8 50 GOP/s (MLAS, X)" in markdown


def test_roof_probes_are_planned_and_labelled_from_the_matrix_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    kinds = ("fp32", "int8", "bf16", "fp16")
    amx = cpu_roof_probes(kinds, _units("intel_xeon_sapphire_rapids_amx.txt"))
    labels = {kind: [probe.label for probe in probes] for kind, probes in amx.items()}
    assert labels == {
        "fp32": ["ONNX Runtime MLAS fp32, AVX-512"],
        "int8": ["ONNX Runtime MLAS u8s8, AMX-INT8", "oneDNN s8s8 (torch._int_mm), AMX-INT8"],
        "bf16": ["oneDNN bf16 (torch matmul), AMX-BF16"],
        "fp16": ["oneDNN fp16 (torch matmul), AVX512-FP16"],
    }
    zen5 = cpu_roof_probes(kinds, _units("amd_epyc_zen5.txt"))
    assert sorted(zen5) == ["bf16", "fp32", "int8"]  # no FP16 units: no FP16 roof
    assert zen5["bf16"][0].isa == "AVX512-BF16" and zen5["int8"][0].isa == "AVX512-VNNI"
    cascade = cpu_roof_probes(kinds, _units("intel_xeon_cascade_lake_vnni.txt"))
    assert sorted(cascade) == ["fp32", "int8"]
    # oneDNN capped to VNNI (the way a VNNI-only machine is simulated): its probes follow; MLAS is not capped.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    capped = cpu_roof_probes(kinds, _units("intel_xeon_sapphire_rapids_amx.txt"))
    assert sorted(capped) == ["fp32", "int8"]
    assert [probe.isa for probe in capped["int8"]] == ["AMX-INT8", "AVX512-VNNI"]


def test_each_row_is_divided_by_the_roof_of_what_it_computes_in() -> None:
    assert roof_kind("int8") == roof_kind("int8", "bf16") == "int8"
    assert roof_kind("fp32") == roof_kind("fp16") == roof_kind("fp32", "f32") == "fp32"
    assert roof_kind("fp32", "bf16") == roof_kind("bf16") == roof_kind("fp16", "bf16") == "bf16"
    assert roof_kind("fp16", "f16") == "fp16"


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_onednn_probe_returns_a_positive_rate(kind: str) -> None:
    if kind == "bf16" and host.onednn_units(host.matrix_units()).best("bf16") is None:
        pytest.skip("this CPU has no BF16 units")
    rate = torch_gemm_probe(kind, seconds=0.2, size=256)
    assert rate > 1.0


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_gemm_probe_returns_a_positive_rate(kind: str) -> None:
    rate = gemm_probe(kind, seconds=0.2, size=256)
    print(f"{kind} GEMM probe: {rate:.0f} GFLOP/s")
    assert rate > 1.0


def test_gpu_peak_table() -> None:
    assert gpu_peak_gflops("NVIDIA H100 80GB HBM3", "int8") == pytest.approx(1978.9e3)
    assert gpu_peak_gflops("NVIDIA H100 PCIe", "fp16") == pytest.approx(756e3)
    assert gpu_peak_gflops("NVIDIA L40S", "fp16") is None  # not an L4
    assert gpu_peak_gflops("Tesla T4", "fp16") == pytest.approx(65e3)
    assert gpu_peak_gflops("Some Future GPU", "fp16") is None
