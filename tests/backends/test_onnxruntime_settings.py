"""ONNX Runtime CPU session settings: the measured defaults are applied, each can be overridden, split-batch
gives the same logits as one session, and ``--backend auto`` without OpenVINO stays on ONNX Runtime."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from digits import cpu_int8_options

import sedeploy
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.backends.base import RunnerClosedError
from sedeploy.build import BuildOptions, build_engine
from sedeploy.errors import ConfigError
from sedeploy.host import usable_cores

SPIN = "session.intra_op.allow_spinning"


def test_session_defaults_are_the_measured_ones() -> None:
    ort = ort_backend.onnxruntime()
    options = ort_backend.session_options()
    assert options.get_session_config_entry(SPIN) == "1"
    assert options.intra_op_num_threads == usable_cores()
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_every_setting_can_be_overridden() -> None:
    ort = ort_backend.onnxruntime()
    options = ort_backend.session_options(
        3,
        "extended",
        config={SPIN: "0", "session.dynamic_block_base": "4"},
        execution_mode="parallel",
    )
    assert options.get_session_config_entry(SPIN) == "0"
    assert options.get_session_config_entry("session.dynamic_block_base") == "4"
    assert options.intra_op_num_threads == 3
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"execution_mode": "async"}, "unknown execution mode 'async'; valid values: sequential, parallel"),
        ({"config": {SPIN: 0}}, "session config entries are strings"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_bad_settings_are_usage_errors(keywords: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ort_backend.session_options(**keywords)


@pytest.fixture(scope="module")
def int8_model(trained_digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("ort-settings")
    model = folder / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    return build_engine(model, cpu_int8_options(trained_digits.calib_dir, calib_size=64)).artifacts[0]


def test_runner_settings_reach_the_session_and_keep_the_logits(int8_model: Path, trained_digits) -> None:  # type: ignore[no-untyped-def]
    images = trained_digits.test_images[:7]
    with sedeploy.load(int8_model, device="cpu") as default:
        expected = default(images)
    with sedeploy.load(
        int8_model,
        device="cpu",
        session_config={SPIN: "0"},
        execution_mode="parallel",
        optimization_level="extended",
    ) as tuned:
        np.testing.assert_allclose(tuned(images), expected, atol=1e-4)
        ort = ort_backend.onnxruntime()
        used = tuned._session.get_session_options()  # what the live session runs with, read back from it
        assert used.get_session_config_entry(SPIN) == "0"
        assert used.execution_mode == ort.ExecutionMode.ORT_PARALLEL
        assert used.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with sedeploy.load(int8_model, device="cpu") as default:
        used = default._session.get_session_options()
        assert used.get_session_config_entry(SPIN) == "1" and used.intra_op_num_threads == usable_cores()


def test_split_batch_matches_one_session_and_serves_concurrent_callers(
    int8_model: Path, trained_digits
) -> None:  # type: ignore[no-untyped-def]
    images = trained_digits.test_images[:32]
    with sedeploy.load(int8_model, device="cpu") as single:
        expected = single(images)
    runner = sedeploy.load(int8_model, device="cpu", sessions=2)
    assert runner.sessions == 2
    for count in (1, 2, 5, 8):  # odd and single-image batches too
        np.testing.assert_allclose(runner(images[:count]), expected[:count], atol=1e-4)
    results: dict[int, np.ndarray] = {}

    def call(start: int) -> None:
        results[start] = runner(images[start : start + 8])

    workers = [threading.Thread(target=call, args=(start,)) for start in (0, 8, 16, 24)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    np.testing.assert_allclose(np.concatenate([results[s] for s in (0, 8, 16, 24)]), expected, atol=1e-4)
    runner.close()
    runner.close()
    with pytest.raises(RunnerClosedError):
        runner(images[:2])


def test_split_batch_needs_at_least_one_session(int8_model: Path) -> None:
    with pytest.raises(ConfigError, match="sessions must be at least 1"):
        sedeploy.load(int8_model, device="cpu", sessions=0)


def test_auto_without_openvino_stays_on_onnxruntime_and_says_why(  # type: ignore[no-untyped-def]
    trained_digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    result = build_engine(model, BuildOptions(precision="fp32"))
    assert result.backend == "onnxruntime" and result.probe is None
    assert "OpenVINO not measured: not installed (pip install 'sedeploy[openvino]')" in result.backend_reason
    assert [path.name for path in result.artifacts] == ["digits.ort.onnx"]


def test_an_optimized_graph_is_refused_on_a_cpu_with_other_instruction_sets(
    int8_model: Path, tmp_path: Path
) -> None:
    """Level ``all`` bakes the build CPU's blocked layouts into ``.ort.onnx``; another kind of CPU must rebuild."""
    import json

    from sedeploy.artifacts.manifest import ManifestError, manifest_path
    from sedeploy.host import cpu_features

    optimized = int8_model.with_name(int8_model.stem + ".ort.onnx")
    manifest = json.loads(manifest_path(optimized).read_text())
    assert manifest["device"]["cpu_features"] == list(cpu_features())
    sedeploy.load(optimized, device="cpu").close()  # built here: loads

    moved = tmp_path / optimized.name
    shutil.copy(optimized, moved)
    manifest["device"]["cpu_features"] = ["avx2", "fma"]  # as if built on an AVX2-only CPU
    manifest_path(moved).write_text(json.dumps(manifest))
    with pytest.raises(
        ManifestError, match=r"for another kind of CPU \(this CPU adds .*rebuild it here"
    ) as caught:
        sedeploy.load(moved, device="cpu")
    message = str(caught.value)
    assert "fma" not in message and "avx2 " not in message  # only the flags that differ are named
    assert f"load the portable {int8_model.name} beside it" in message
    absent = next(flag for flag in ("amx_int8", "avx512_fp16", "sve", "i8mm") if flag not in cpu_features())
    manifest["device"]["cpu_features"] = [*cpu_features(), absent]  # built where one more unit was present
    manifest_path(moved).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=rf"built with {absent}, which this CPU lacks\)"):
        sedeploy.load(moved, device="cpu")
