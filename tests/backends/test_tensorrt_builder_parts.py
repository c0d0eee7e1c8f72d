"""The TensorRT builder's pieces that need no GPU: timing-cache merging, DLA placement and refusals, the
calibrator keeping its errors, and the typed options (fake TensorRT objects stand in where TensorRT cannot exist)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cuda_fakes import install_cuda_python

from sedeploy.backends.tensorrt import builder
from sedeploy.backends.tensorrt.compat import TensorRTOptions, check_dla_options, dla_problem
from sedeploy.errors import BadInputError, ConfigError

# Timing cache: merged, never overwritten.


class _Cache:
    """A timing cache as a set of timing entries, serialised as sorted lines."""

    def __init__(self, entries: set[str], compatible: bool = True) -> None:
        self.entries = set(entries)
        self.compatible = compatible

    def combine(self, other: _Cache, ignore_mismatch: bool) -> bool:
        if not other.compatible:
            return False
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return "\n".join(sorted(self.entries)).encode()


class _Config:
    def __init__(self, built: set[str], file_compatible: bool = True) -> None:
        self.cache = _Cache(built)
        self.file_compatible = file_compatible

    def get_timing_cache(self) -> _Cache:
        return self.cache

    def create_timing_cache(self, data: bytes) -> _Cache:
        return _Cache(set(data.decode().split("\n")) - {""}, self.file_compatible)


def test_timing_cache_is_merged_with_what_another_build_wrote(tmp_path: Path) -> None:
    path = tmp_path / "timing.cache"
    path.write_bytes(b"conv1:tactic7\nconv2:tactic3")  # written by a build that finished first
    builder.save_timing_cache(_Config({"conv3:tactic1", "conv1:tactic7"}), path)  # type: ignore[arg-type]
    assert path.read_bytes().decode().split("\n") == ["conv1:tactic7", "conv2:tactic3", "conv3:tactic1"]


def test_timing_cache_from_another_release_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "timing.cache"
    path.write_bytes(b"old:entry")
    builder.save_timing_cache(_Config({"new:entry"}, file_compatible=False), path)  # type: ignore[arg-type]
    assert path.read_bytes() == b"new:entry"
    assert any("cannot be merged" in record.message for record in caplog.records)


def test_two_builds_saving_at_once_keep_both_timings(tmp_path: Path) -> None:
    path = tmp_path / "timing.cache"
    configs = [_Config({f"layer{index}:tactic"}) for index in range(6)]
    threads = [threading.Thread(target=builder.save_timing_cache, args=(config, path)) for config in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert set(path.read_bytes().decode().split("\n")) == {f"layer{index}:tactic" for index in range(6)}


# DLA placement.


class _Layer:
    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.type = f"LayerType.{kind}"


class _Network:
    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, index: int) -> _Layer:
        return self.layers[index]


class _DlaConfig:
    """can_run_on_DLA as a Jetson's DLA answers it for the SE block: pooling and the gate's scale fall back."""

    def __init__(self) -> None:
        self.flags: list[str] = []
        self.default_device_type: Any = None
        self.DLA_core = -1

    def can_run_on_DLA(self, layer: _Layer) -> bool:
        return layer.type.split(".")[-1] not in ("REDUCE", "ELEMENTWISE")

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


SE_BLOCK = [
    _Layer("conv1", "CONVOLUTION"),
    _Layer("relu1", "ACTIVATION"),
    _Layer("se.pool", "REDUCE"),
    _Layer("se.fc1", "CONVOLUTION"),
    _Layer("se.gate", "ACTIVATION"),
    _Layer("se.scale", "ELEMENTWISE"),
]


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = ModuleType("tensorrt")
    module.DeviceType = SimpleNamespace(DLA="DLA", GPU="GPU")  # type: ignore[attr-defined]
    module.BuilderFlag = SimpleNamespace(GPU_FALLBACK="GPU_FALLBACK")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def test_dla_report_lists_layers_on_the_dla_and_the_gpu(fake_trt: ModuleType) -> None:
    config = _DlaConfig()
    placements = builder._configure_dla(
        SimpleNamespace(num_DLA_cores=2),  # type: ignore[arg-type]
        _Network(SE_BLOCK),  # type: ignore[arg-type]
        config,  # type: ignore[arg-type]
        1,
        True,
        "Orin",
    )
    assert config.default_device_type == "DLA" and config.DLA_core == 1 and config.flags == ["GPU_FALLBACK"]
    assert [placement.name for placement in placements if not placement.on_dla] == ["se.pool", "se.scale"]
    assert (
        builder.describe_placement(placements)
        == "4 of 6 layers on the DLA, 2 on the GPU (ELEMENTWISE, REDUCE)"
    )


def test_dla_without_gpu_fallback_refuses_layers_it_cannot_run(fake_trt: ModuleType) -> None:
    with pytest.raises(
        BadInputError, match=r"2 layer\(s\) cannot run on DLA core 0.*se\.pool.*gpu_fallback=True"
    ) as caught:
        builder._configure_dla(
            SimpleNamespace(num_DLA_cores=1),  # type: ignore[arg-type]
            _Network(SE_BLOCK),  # type: ignore[arg-type]
            _DlaConfig(),  # type: ignore[arg-type]
            0,
            False,
            "Orin",
        )
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("cores", "core", "expected"), [(0, 0, "has no deep-learning accelerator"), (2, 2, "cores 0..1")]
)
def test_dla_refused_where_the_platform_lacks_it(
    fake_trt: ModuleType, cores: int, core: int, expected: str
) -> None:
    with pytest.raises(BadInputError, match=expected):
        builder._configure_dla(
            SimpleNamespace(num_DLA_cores=cores),  # type: ignore[arg-type]
            _Network(SE_BLOCK),  # type: ignore[arg-type]
            _DlaConfig(),  # type: ignore[arg-type]
            core,
            True,
            "NVIDIA H200",
        )


def test_dla_runner_check() -> None:
    assert dla_problem({"dla_core": None}, 0) is None
    assert dla_problem({"dla_core": 0}, 2) is None
    no_dla = dla_problem({"dla_core": 0}, 0)
    assert no_dla is not None and "no DLA" in no_dla
    too_few = dla_problem({"dla_core": 1}, 1)
    assert too_few is not None and "only 1 DLA core" in too_few


# Options.


def test_new_options_are_recorded_and_passed_to_the_builder() -> None:
    options = TensorRTOptions(dla_core=0, gpu_fallback=True, sparsity=True)
    assert options.given() == ("dla_core", "gpu_fallback", "sparsity")
    assert options.builder_kwargs() == {"dla_core": 0, "gpu_fallback": True, "sparsity": True}
    assert TensorRTOptions.from_dict(options.to_dict()) == options
    assert (
        TensorRTOptions.from_dict({"profile": "1:8:32"}).dla_core is None
    )  # manifests from before these options


@pytest.mark.parametrize(
    ("dla_core", "gpu_fallback", "hardware_compat", "message"),
    [
        (None, True, False, "gpu_fallback applies to a DLA build; give dla_core"),
        (0, False, True, "cannot be hardware-compatible"),
        (-1, False, False, "DLA core index"),
    ],
)
def test_contradicting_dla_options_are_config_errors(
    dla_core: int | None, gpu_fallback: bool, hardware_compat: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_dla_options(dla_core, gpu_fallback, hardware_compat)
    with pytest.raises(ConfigError, match=message):
        TensorRTOptions(dla_core=dla_core, gpu_fallback=gpu_fallback, hardware_compat=hardware_compat)


# The legacy calibrator keeps errors TensorRT would swallow.


def test_calibrator_keeps_a_failing_batch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cuda_python(monkeypatch)
    module = ModuleType("tensorrt")

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    module.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)

    def batches() -> Any:
        yield np.ones((2, 3, 4, 4), np.float32)
        yield np.ones((2, 3, 4, 4), np.float32)
        raise OSError("image 17 cannot be read")

    from sedeploy.backends import cuda_memory

    with cuda_memory.CudaContext(0):
        calibrator, size, shape = builder._entropy_calibrator(batches(), "input", None)
        assert size == 2 and shape == (2, 3, 4, 4)
        assert calibrator.get_batch(["input"]) is not None
        assert calibrator.get_batch(["input"]) is not None
        assert calibrator.get_batch(["input"]) is None  # what TensorRT sees: the end of the data
        assert isinstance(calibrator.error, OSError) and "image 17" in str(calibrator.error)
        calibrator.free()


# The source's precision: its manifest through the hash check, else its graph.


def test_source_precision_reads_the_manifest_only_when_it_describes_the_file(tmp_path: Path) -> None:
    from manifests import make_manifest

    from sedeploy.artifacts.manifest import ManifestError, write_manifest

    source = tmp_path / "model.int8.onnx"
    source.write_bytes(b"not parsed: the manifest answers")
    write_manifest(make_manifest(source, precision="int8", recipe={"flavour": "tensorrt"}), source)
    precision, recipe, _ = builder._source_precision(source)
    assert precision == "int8" and recipe == {"flavour": "tensorrt"}
    source.write_bytes(b"changed after the build")  # the manifest now describes another file
    with pytest.raises(ManifestError, match="changed or truncated"):
        builder._source_precision(source)
