"""host: matrix units (AMX, VNNI, BF16, FP16, Arm dot product and matrix multiply) from recorded
``/proc/cpuinfo`` texts of the machines sedeploy runs on (x86 servers, Graviton3, Jetson AGX Orin, Raspberry
Pi 5), the units each engine's kernels use (the roofs' ISA labels), oneDNN's ISA cap, the one core count
(affinity and cgroup quota) and the one machine description."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sedeploy import host
from sedeploy.errors import ConfigError

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
        # Armv8.2 cores: INT8 dot product (asimddp) and FP16 arithmetic (asimdhp), no I8MM, BF16 or SVE
        ("arm_cortex_a78ae_jetson_agx_orin.txt", ("Arm DOTPROD",), (), ("Arm FP16",), ("NEON",)),
        ("arm_cortex_a76_raspberry_pi5.txt", ("Arm DOTPROD",), (), ("Arm FP16",), ("NEON",)),
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
    assert machine["description"].endswith(f" (matrix units: {here.describe()})")
    assert host.describe_host() == machine["description"]  # manifests and reports: one line
    assert machine["cores"] == host.usable_cores() and machine["logical_cpus"] >= machine["cores"]


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


ARM = {
    "arm_neoverse_v1_graviton3.txt": ("Arm Neoverse-V1", None, 2),
    "arm_cortex_a78ae_jetson_agx_orin.txt": ("Arm Cortex-A78AE", None, 12),
    "arm_cortex_a76_raspberry_pi5.txt": ("Arm Cortex-A76", "Raspberry Pi 5 Model B Rev 1.0", 4),
}


@pytest.mark.parametrize("fixture", sorted(ARM))
def test_arm_cpus_are_named_by_their_implementer_and_part(fixture: str) -> None:
    """No ``flags`` line and no model name (Jetson's kernel prints a generic ``ARMv8 Processor``): the part names it."""
    text = cpuinfo(fixture)
    model, board, processors = ARM[fixture]
    assert not any(line.startswith("flags") for line in text.splitlines())
    assert host.parse_cpu_model(text) == model
    without_generic_name = "\n".join(line for line in text.splitlines() if not line.startswith("model name"))
    assert host.parse_cpu_model(without_generic_name) == model
    assert host.parse_board(text) == board and host.parse_processor_count(text) == processors
    machine = host.describe_machine(text)
    assert (machine["cpu"], machine["board"], machine["cores"]) == (model, board, processors)
    assert machine["architecture"] == "aarch64"


def test_arm_names_cover_big_little_and_unknown_parts() -> None:
    """A big.LITTLE SoC lists both core types; a part not in the table keeps its numbers."""
    pi5 = cpuinfo("arm_cortex_a76_raspberry_pi5.txt")
    blocks = pi5.split("\n\n")
    little = [
        block.replace("0xd0b", "0xd05") for block in blocks[2:4]
    ]  # two Cortex-A55 cores, as on an RK3588
    assert (
        host.parse_cpu_model("\n\n".join([*blocks[:2], *little, *blocks[4:]]))
        == "Arm Cortex-A76 + Cortex-A55"
    )
    assert host.parse_cpu_model(pi5.replace("0xd0b", "0xd99")) == "Arm part 0xd99"
    assert host.parse_cpu_model(pi5.replace("0x41", "0x99")) == "implementer 0x99 part 0xd0b"
    assert host.parse_arm_cores(cpuinfo("amd_epyc_zen5.txt")) == ()


def test_arm_features_and_the_machine_line() -> None:
    graviton = cpuinfo("arm_neoverse_v1_graviton3.txt")
    assert {"asimd", "asimddp", "i8mm", "bf16", "sve"} <= set(host.parse_cpu_features(graviton))
    assert host.describe_machine(graviton)["instruction_sets"] == ["asimddp", "bf16", "i8mm", "sve"]
    pi5 = host.describe_machine(cpuinfo("arm_cortex_a76_raspberry_pi5.txt"))
    assert pi5["description"] == (
        "Arm Cortex-A76 (Raspberry Pi 5 Model B Rev 1.0), 4 cores, Linux aarch64, asimddp "
        "(matrix units: INT8 Arm DOTPROD; BF16 none; FP16 Arm FP16; FP32 NEON)"
    )
    sve2 = graviton.replace(" sve ", " sve sve2 ")  # a Neoverse-V2 (Graviton4) adds SVE2
    assert host.parse_matrix_units(sve2).fp32 == ("SVE2", "SVE", "NEON")


@pytest.mark.parametrize(
    ("fixture", "mlas_int8", "mlas_fp32", "mlas_fp16", "torch_bf16", "openvino_bf16"),
    [
        ("arm_neoverse_v1_graviton3.txt", "Arm I8MM", "NEON", "Arm FP16", "Arm BF16", None),
        ("arm_cortex_a78ae_jetson_agx_orin.txt", "Arm DOTPROD", "NEON", "Arm FP16", None, None),
        ("arm_cortex_a76_raspberry_pi5.txt", "Arm DOTPROD", "NEON", "Arm FP16", None, None),
        ("intel_xeon_sapphire_rapids_amx.txt", "AMX-INT8", "AVX-512", None, "AMX-BF16", "AMX-BF16"),
        ("amd_epyc_zen5.txt", "AVX512-VNNI", "AVX-512", None, "AVX512-BF16", "AVX512-BF16"),
    ],
)
def test_each_engine_names_the_unit_its_kernels_run_on(
    fixture: str,
    mlas_int8: str,
    mlas_fp32: str,
    mlas_fp16: str | None,
    torch_bf16: str | None,
    openvino_bf16: str | None,
) -> None:
    """The roofs' ISA labels: MLAS's SGEMM is NEON on Arm (SVE only serves its element-wise kernels), its INT8
    GEMM UMMLA where I8MM exists; OpenVINO has no BF16 on Arm, torch does (oneDNN with the Arm Compute Library)."""
    units = host.parse_matrix_units(cpuinfo(fixture))
    mlas = host.engine_units("onnxruntime", units)
    assert (mlas.best("int8"), mlas.best("fp32"), mlas.best("fp16"), mlas.best("bf16")) == (
        mlas_int8,
        mlas_fp32,
        mlas_fp16,
        None,
    )
    assert host.engine_units("torch", units, "").best("bf16") == torch_bf16
    assert host.engine_units("openvino", units, "").best("bf16") == openvino_bf16
    assert units.is_arm == fixture.startswith("arm_")


def test_engine_units_follow_onednns_cap_and_refuse_an_unknown_engine() -> None:
    amx = host.parse_matrix_units(cpuinfo("intel_xeon_sapphire_rapids_amx.txt"))
    assert host.engine_units("openvino", amx, "AVX512_CORE_VNNI").best("bf16") is None
    assert host.engine_units("torch", amx, "AVX512_CORE_VNNI").best("int8") == "AVX512-VNNI"
    assert host.engine_units("onnxruntime", amx) == host.engine_units(
        "onnxruntime", amx, "AVX2"
    )  # MLAS: no cap
    graviton = host.parse_matrix_units(cpuinfo("arm_neoverse_v1_graviton3.txt"))
    assert host.engine_units("torch", graviton, "AVX2") == graviton  # an x86 cap leaves Arm units alone
    with pytest.raises(
        ConfigError, match="unknown engine 'tensorflow'; valid values: onnxruntime, openvino, torch"
    ):
        host.engine_units("tensorflow", graviton)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_cgroup_quota_is_read_from_v2_and_v1_and_the_tightest_wins(tmp_path: Path) -> None:
    """A ``--cpus`` quota, read from the cgroup files a kernel writes: the tightest over the cgroup and its parents."""
    v2 = tmp_path / "v2"
    _write(v2 / "cpu.max", "max 100000\n")  # a namespaced root with no quota of its own
    _write(v2 / "app" / "cpu.max", "300000 100000\n")
    _write(v2 / "app" / "worker" / "cpu.max", "150000 100000\n")
    assert host.cgroup_cpu_limit(v2, "0::/app/worker\n") == 1.5
    assert host.cgroup_cpu_limit(v2, "0::/app\n") == 3.0
    assert host.cgroup_cpu_limit(v2, "0::/\n") is None
    # A container without a cgroup namespace: the host's path is absent, its own cgroup is mounted as the root.
    _write(v2 / "cpu.max", "200000 100000\n")
    assert host.cgroup_cpu_limit(v2, "0::/system.slice/docker-0123.scope\n") == 2.0

    v1 = tmp_path / "v1"
    _write(v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us", "250000\n")
    _write(v1 / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us", "100000\n")
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    membership = "12:memory:/docker\n4:cpu,cpuacct:/docker\n0::/\n"
    assert host.cgroup_cpu_limit(v1, membership) == 2.5
    assert host.cgroup_cpu_limit(v1, "4:cpu,cpuacct:/\n") is None  # -1: no quota
    assert host.cgroup_cpu_limit(tmp_path / "none", membership) is None


def test_usable_cores_is_the_affinity_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    assert host.usable_cores() == min(affinity, math.ceil(host.cgroup_cpu_limit() or affinity))
    monkeypatch.setattr(host, "cgroup_cpu_limit", lambda: 0.5)
    assert host.usable_cores() == 1
    monkeypatch.setattr(host, "cgroup_cpu_limit", lambda: 1000.0)
    assert host.usable_cores() == affinity


def test_a_container_with_fewer_cores_than_the_machine_says_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29: in a 2-of-16-core container, reports said 16 cores while ONNX Runtime ran 2 threads."""
    monkeypatch.setattr(host, "usable_cores", lambda: 2)
    monkeypatch.setattr(host.os, "cpu_count", lambda: 16)
    machine = host.describe_machine()
    assert (machine["cores"], machine["logical_cpus"]) == (2, 16)
    assert ", 2 of 16 cores, " in machine["description"] and ", 2 of 16 cores, " in host.describe_host()
    assert host.host_report_text(host.host_report()).splitlines()[0].endswith(", 2 of 16 cores usable")
