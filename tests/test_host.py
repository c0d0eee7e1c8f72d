"""host: matrix units (AMX, VNNI, BF16, FP16, Arm dot product) from recorded ``/proc/cpuinfo`` texts of the
machines sedeploy runs on, oneDNN's ISA cap, and the machine line that names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sedeploy import host

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"


def cpuinfo(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("fixture", "int8", "bf16", "fp16", "fp32"),
    [
        ("amd_epyc_zen5.txt", ("AVX512-VNNI", "AVX-VNNI"), ("AVX512-BF16",), (), ("AVX-512", "AVX2-FMA")),
        ("intel_xeon_cascade_lake_vnni.txt", ("AVX512-VNNI",), (), (), ("AVX-512", "AVX2-FMA")),
        (
            "intel_xeon_sapphire_rapids_amx.txt",
            ("AMX-INT8", "AVX512-VNNI", "AVX-VNNI"),
            ("AMX-BF16", "AVX512-BF16"),
            ("AVX512-FP16",),
            ("AVX-512", "AVX2-FMA"),
        ),
        (  # the CPU of 2026-12-02's session: model 207, named only "Intel(R) Xeon(R) Processor"; the flags decide
            "intel_xeon_emerald_rapids_amx.txt",
            ("AMX-INT8", "AVX512-VNNI", "AVX-VNNI"),
            ("AMX-BF16", "AVX512-BF16"),
            ("AVX512-FP16",),
            ("AVX-512", "AVX2-FMA"),
        ),
        (
            "arm_neoverse_v1_graviton3.txt",
            ("Arm I8MM", "Arm DOTPROD"),
            ("Arm BF16",),
            ("Arm FP16",),
            ("SVE", "NEON"),
        ),
    ],
)
def test_matrix_units_of_each_recorded_machine(
    fixture: str, int8: tuple[str, ...], bf16: tuple[str, ...], fp16: tuple[str, ...], fp32: tuple[str, ...]
) -> None:
    units = host.parse_matrix_units(cpuinfo(fixture))
    assert (units.int8, units.bf16, units.fp16, units.fp32) == (int8, bf16, fp16, fp32)
    assert units.has_amx == ("amx" in fixture)
    line = host.describe_isa(cpuinfo(fixture))
    assert line.startswith(f"INT8 {' '.join(int8)}; BF16 {' '.join(bf16) or 'none'}; ")


def test_roof_labels_follow_the_units_and_oneDNNs_cap() -> None:
    """A roof is labelled with the unit that ran it: AMX where present; capped oneDNN falls back to VNNI."""
    amx = host.parse_matrix_units(cpuinfo("intel_xeon_sapphire_rapids_amx.txt"))
    assert (amx.best("int8"), amx.best("bf16"), amx.best("fp16")) == ("AMX-INT8", "AMX-BF16", "AVX512-FP16")
    capped = host.onednn_units(amx, "AVX512_CORE_VNNI")
    assert (capped.best("int8"), capped.best("bf16"), capped.best("fp16")) == ("AVX512-VNNI", None, None)
    assert not capped.has_amx and capped.fp32 == ("AVX-512", "AVX2-FMA")
    assert host.onednn_units(amx, "AVX512_CORE_BF16").best("bf16") == "AVX512-BF16"
    assert host.onednn_units(amx, "avx512_core_amx") == amx  # alias, any case
    assert host.onednn_units(amx, "NOT_AN_ISA") == amx  # oneDNN ignores a name it does not know
    cascade = host.parse_matrix_units(cpuinfo("intel_xeon_cascade_lake_vnni.txt"))
    assert cascade.best("bf16") is None and cascade.best("int8") == "AVX512-VNNI"
    assert host.parse_matrix_units("") == host.MatrixUnits()
    assert host.MatrixUnits().describe() == "INT8 none; BF16 none; FP16 none; FP32 none"


def test_the_machine_line_and_every_manifest_name_this_cpus_units() -> None:
    here = host.matrix_units()
    machine = host.describe_machine()
    assert machine["matrix_units"] == here.to_dict()
    assert f"(matrix units: {here.describe()})" in machine["description"]
    assert host.describe_host().endswith(f"matrix units: {here.describe()}")


def test_cpu_features_are_unchanged_by_the_matrix_unit_parser() -> None:
    """The optimized-graph CPU check compares CPU_FEATURES lists: the unit parser must not widen them."""
    text = cpuinfo("intel_xeon_sapphire_rapids_amx.txt")
    features = host.parse_cpu_features(text)
    assert set(features) <= set(host.CPU_FEATURES)
    assert {"amx_int8", "amx_bf16", "avx512_fp16"} <= set(features)
    assert host.parse_cpu_model(text) == "Intel(R) Xeon(R) Platinum 8488C"


def test_the_host_report_names_every_unit_and_the_onednn_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    report = host.host_report(cpuinfo("intel_xeon_sapphire_rapids_amx.txt"))
    assert report["cpu"] == "Intel(R) Xeon(R) Platinum 8488C"
    assert report["matrix_units"]["bf16"] == ["AMX-BF16", "AVX512-BF16"]
    assert report["onednn_matrix_units"]["bf16"] == [] and report["onednn_max_cpu_isa"] == "AVX512_CORE_VNNI"
    lines = host.host_report_text(report).splitlines()
    assert lines[0].startswith("cpu      Intel(R) Xeon(R) Platinum 8488C, ")
    assert "int8     AMX-INT8 AVX512-VNNI AVX-VNNI" in lines and "fp16     AVX512-FP16" in lines
    assert any(
        line.startswith("oneDNN   ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI: ") and "BF16 none" in line
        for line in lines
    )
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert not any(
        line.startswith("oneDNN") for line in host.host_report_text(host.host_report()).splitlines()
    )
