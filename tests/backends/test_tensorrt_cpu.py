"""CPU-side tests of the TensorRT backend and the pinned-memory layer: the logic that needs no GPU."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from manifests import make_manifest
from onnx import TensorProto, helper

from sedeploy.artifacts.precision import graph_precision
from sedeploy.backends import cuda_memory
from sedeploy.backends import tensorrt as trt_backend
from sedeploy.backends.tensorrt import (
    BatchProfile,
    BatchProfileError,
    Chunk,
    ParserIssue,
    check_implicit_int8_supported,
    engine_compatibility_problem,
    format_parser_errors,
    join_outputs,
    parse_batch_profile,
    plan_chunks,
    resolve_batch_profile,
    version_tuple,
)
from sedeploy.errors import BadInputError, MissingDependencyError

# Batch profiles.


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1:8:32", BatchProfile(1, 8, 32)), ("4", BatchProfile(4, 4, 4)), (" 2:2:9 ", BatchProfile(2, 2, 9))],
)
def test_parse_batch_profile(text: str, expected: BatchProfile) -> None:
    assert parse_batch_profile(text) == expected


@pytest.mark.parametrize("text", ["1:8", "a:b:c", "1:8:32:64", "8:4:32", "1:64:32", "0:1:2", "-1:1:2", ""])
def test_parse_batch_profile_rejects_bad_profiles(text: str) -> None:
    with pytest.raises(BatchProfileError) as caught:
        parse_batch_profile(text)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [
        (None, BatchProfile(1, 8, 32)),
        (64, BatchProfile(1, 8, 32)),
        (32, BatchProfile(1, 8, 32)),
        (16, BatchProfile(1, 8, 16)),
        (4, BatchProfile(1, 4, 4)),
        (1, BatchProfile(1, 1, 1)),
    ],
)
def test_default_profile_is_capped_by_model_max_batch(max_batch: int | None, expected: BatchProfile) -> None:
    assert resolve_batch_profile(None, max_batch) == expected


def test_explicit_profile_within_model_limit_is_kept() -> None:
    assert resolve_batch_profile("2:4:16", 16) == BatchProfile(2, 4, 16)
    assert resolve_batch_profile(BatchProfile(1, 1, 8), None) == BatchProfile(1, 1, 8)


def test_explicit_profile_beyond_model_limit_is_refused() -> None:
    with pytest.raises(BatchProfileError, match=r"exceeds the model's max batch 16.*larger max_batch"):
        resolve_batch_profile("1:8:64", 16)


def test_profile_dict_is_what_the_manifest_records() -> None:
    assert BatchProfile(1, 8, 32).to_dict() == {"min": 1, "opt": 8, "max": 32}
    assert str(BatchProfile(1, 8, 32)) == "1:8:32"


# Manifest compatibility decisions.


def _engine(
    version: str = "10.3.0.26", *, hardware: bool = False, version_compat: bool = False
) -> dict[str, Any]:
    return {
        "tensorrt_version": version,
        "profile": {"min": 1, "opt": 8, "max": 32},
        "hardware_compat": hardware,
        "version_compat": version_compat,
    }


DEVICE_86 = {
    "description": "NVIDIA A10G, compute capability 8.6",
    "gpu_name": "NVIDIA A10G",
    "compute_capability": "8.6",
}


def _problem(engine: dict[str, Any] | None, tensorrt_version: str, capability: str) -> str | None:
    return engine_compatibility_problem(
        engine, DEVICE_86, tensorrt_version=tensorrt_version, compute_capability=capability
    )


def test_same_tensorrt_and_gpu_is_compatible() -> None:
    assert _problem(_engine(), "10.3.0.26", "8.6") is None


def test_build_number_alone_does_not_matter() -> None:
    assert _problem(_engine("10.3.0.26"), "10.3.0.30", "8.6") is None


@pytest.mark.parametrize("runtime", ["10.3.1", "10.16.1.11", "11.4.0.106", "10.2.0"])
def test_other_tensorrt_version_is_refused(runtime: str) -> None:
    problem = _problem(_engine("10.3.0.26"), runtime, "8.6")
    assert problem is not None
    assert "10.3.0.26" in problem and runtime in problem


def test_version_compatible_engine_runs_on_later_release_of_same_major() -> None:
    assert _problem(_engine("10.3.0", version_compat=True), "10.16.1.11", "8.6") is None
    assert _problem(_engine("10.3.0", version_compat=True), "10.3.0", "8.6") is None


@pytest.mark.parametrize("runtime", ["10.2.0", "11.4.0.106", "9.9.9"])
def test_version_compatible_engine_refused_on_older_or_other_major(runtime: str) -> None:
    problem = _problem(_engine("10.3.0", version_compat=True), runtime, "8.6")
    assert problem is not None and "version-compatible" in problem


def test_other_compute_capability_is_refused() -> None:
    problem = _problem(_engine(), "10.3.0.26", "8.9")
    assert problem is not None
    assert "NVIDIA A10G" in problem and "8.6" in problem and "8.9" in problem


def test_hardware_compatible_engine_runs_on_any_ampere_or_newer() -> None:
    for capability in ("8.0", "8.9", "9.0", "12.0"):
        assert _problem(_engine(hardware=True), "10.3.0.26", capability) is None


def test_hardware_compatible_engine_refused_before_ampere() -> None:
    problem = _problem(_engine(hardware=True), "10.3.0.26", "7.5")
    assert problem is not None and "Ampere" in problem


def test_hardware_compat_does_not_excuse_a_tensorrt_mismatch() -> None:
    assert _problem(_engine(hardware=True), "10.16.1", "8.6") is not None


def test_missing_engine_section_or_capability_is_a_problem() -> None:
    assert _problem(None, "10.3.0", "8.6") is not None
    no_capability = engine_compatibility_problem(
        _engine(), {"description": "?"}, tensorrt_version="10.3.0.26", compute_capability="8.6"
    )
    assert no_capability is not None


def test_compute_capability_may_be_recorded_as_a_list() -> None:
    device = {**DEVICE_86, "compute_capability": [8, 6]}
    assert (
        engine_compatibility_problem(
            _engine(), device, tensorrt_version="10.3.0.26", compute_capability="8.6"
        )
        is None
    )


def test_version_tuple() -> None:
    assert version_tuple("10.16.1.11") == (10, 16, 1, 11)
    assert version_tuple("10.3.0rc1") == (10, 3, 0)
    assert version_tuple("") == ()


# Buffer sizing.


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((32, 3, 224, 224), np.float32, 32 * 3 * 224 * 224 * 4),
        ((8, 3, 64, 64), np.float16, 8 * 3 * 64 * 64 * 2),
        ((8, 1000), "int8", 8000),
        ((16, 10), "float32", 640),
        ((), np.float32, 4),
        ((0, 10), np.float32, 0),
    ],
)
def test_nbytes_for(shape: tuple[int, ...], dtype: Any, expected: int) -> None:
    assert cuda_memory.nbytes_for(shape, dtype) == expected


def test_nbytes_refuses_unknown_dimensions() -> None:
    with pytest.raises(BadInputError):
        cuda_memory.nbytes_for((-1, 3, 64, 64), np.float32)


def test_max_shape_replaces_only_the_dynamic_batch() -> None:
    assert cuda_memory.max_shape((-1, 3, 64, 64), 16) == (16, 3, 64, 64)
    assert cuda_memory.max_shape((4, 10), 16) == (4, 10)
    with pytest.raises(BadInputError):
        cuda_memory.max_shape((-1, 3, -1, 64), 16)
    with pytest.raises(BadInputError):
        cuda_memory.max_shape((-1, 10), 0)


def test_tensor_layout_sizes() -> None:
    layout = cuda_memory.TensorLayout("input", "float32", (32, 3, 64, 64), is_input=True)
    assert layout.nbytes == 32 * 3 * 64 * 64 * 4
    assert layout.row_nbytes == 3 * 64 * 64 * 4


# Batch split and join.


def test_plan_chunks_splits_at_max_batch() -> None:
    assert plan_chunks(70, 1, 32) == [Chunk(0, 32, 32), Chunk(32, 64, 32), Chunk(64, 70, 6)]
    assert plan_chunks(32, 1, 32) == [Chunk(0, 32, 32)]
    assert plan_chunks(5, 1, 32) == [Chunk(0, 5, 5)]
    assert plan_chunks(0, 1, 32) == []


def test_plan_chunks_pads_up_to_min_batch() -> None:
    chunks = plan_chunks(70, 8, 32)
    assert [chunk.run_rows for chunk in chunks] == [32, 32, 8]
    assert [chunk.rows for chunk in chunks] == [32, 32, 6]
    assert plan_chunks(3, 4, 16) == [Chunk(0, 3, 4)]


def test_plan_chunks_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        plan_chunks(10, 0, 4)
    with pytest.raises(ValueError):
        plan_chunks(10, 8, 4)


@pytest.mark.parametrize("total", [0, 1, 5, 16, 17, 50])
def test_split_and_join_round_trip(total: int) -> None:
    batch = np.arange(total * 3, dtype=np.float32).reshape(total, 3)
    parts = []
    for chunk in plan_chunks(total, 2, 16):
        padded = np.zeros((chunk.run_rows, 3), dtype=np.float32)
        padded[: chunk.rows] = batch[chunk.start : chunk.stop]
        parts.append((padded * 2)[: chunk.rows])
    joined = join_outputs(parts, (3,), "float32")
    np.testing.assert_array_equal(joined, batch * 2)
    assert joined.shape == (total, 3) and joined.dtype == np.float32


# The double-buffering pipeline's ordering.


def test_pipeline_keeps_order_and_at_most_one_item_per_slot() -> None:
    events: list[tuple[str, str, int]] = []
    busy: set[str] = set()

    def submit(slot: str, item: int) -> int:
        assert slot not in busy, "a slot was reused before its result was collected"
        busy.add(slot)
        events.append(("submit", slot, item))
        return item * 10

    def collect(slot: str, pending: int) -> int:
        busy.remove(slot)
        events.append(("collect", slot, pending // 10))
        return pending

    results = list(cuda_memory.pipeline(range(5), ["a", "b"], submit, collect))
    assert results == [0, 10, 20, 30, 40]
    # Item 1 is submitted on the other slot before item 0 is collected: the overlap.
    assert events[:3] == [("submit", "a", 0), ("submit", "b", 1), ("collect", "a", 0)]
    assert not busy


def test_pipeline_with_one_slot_is_sequential() -> None:
    events: list[str] = []

    def submit(slot: str, item: int) -> int:
        events.append(f"s{item}")
        return item

    def collect(slot: str, pending: int) -> int:
        events.append(f"c{pending}")
        return pending

    assert list(cuda_memory.pipeline([1, 2], ["only"], submit, collect)) == [1, 2]
    assert events == ["s1", "c1", "s2", "c2"]


def test_pipeline_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        list(cuda_memory.pipeline([1], [], lambda s, i: i, lambda s, p: p))


# Parser errors, precision, version features.


def test_parser_errors_name_node_op_and_message() -> None:
    issues = [
        ParserIssue(3, "/layer1/se/Mul", "Mul", "broadcast dimensions must be conformable"),
        ParserIssue(7, "", "CustomOp", "no importer registered"),
    ]
    message = format_parser_errors("model.onnx", issues, "10.3.0")
    assert "\n" not in message
    assert "2 errors" in message and "model.onnx" in message and "10.3.0" in message
    assert "'/layer1/se/Mul' (Mul): broadcast dimensions must be conformable" in message
    assert "node #7 (CustomOp): no importer registered" in message


def _graph_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=initializers,
    )
    return helper.make_model(graph)


def test_graph_precision() -> None:
    fp32 = _graph_model([helper.make_node("Relu", ["x"], ["y"])], [])
    assert graph_precision(fp32) == "fp32"
    half_weight = helper.make_tensor(
        "w", TensorProto.FLOAT16, [4], np.ones(4, np.float16).tobytes(), raw=True
    )
    fp16 = _graph_model([helper.make_node("Relu", ["x"], ["y"])], [half_weight])
    assert graph_precision(fp16) == "fp16"
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    qdq = _graph_model(
        [
            helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s"], ["y"]),
        ],
        [scale],
    )
    assert graph_precision(qdq) == "int8"


def test_implicit_int8_allowed_where_the_release_has_calibrators() -> None:
    tensorrt_10 = SimpleNamespace(
        __version__="10.3.0", IInt8EntropyCalibrator2=object, BuilderFlag=SimpleNamespace(INT8=1, FP16=2)
    )
    check_implicit_int8_supported(tensorrt_10)


def test_implicit_int8_refused_with_one_line_on_strongly_typed_only_releases() -> None:
    tensorrt_11 = SimpleNamespace(__version__="11.4.0.106", BuilderFlag=SimpleNamespace(VERSION_COMPATIBLE=1))
    with pytest.raises(BadInputError) as caught:
        check_implicit_int8_supported(tensorrt_11)
    message = str(caught.value)
    assert "\n" not in message
    assert "11.4.0.106" in message and "10.x" in message


# Missing optional dependencies.


@pytest.fixture
def no_gpu_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import tensorrt`` and ``import pycuda`` fail, as on a machine without them."""
    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)


def test_modules_import_without_tensorrt_or_pycuda(
    no_gpu_stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sedeploy.backends as backends_package

    # Re-importing rebinds the parent package's attributes too; restore them with sys.modules afterwards, so
    # later tests see one cuda_memory module, not two.
    monkeypatch.setattr(backends_package, "cuda_memory", backends_package.cuda_memory)
    monkeypatch.setattr(backends_package, "tensorrt", backends_package.tensorrt)
    for name in [
        name
        for name in sys.modules
        if name.startswith(("sedeploy.backends.tensorrt", "sedeploy.backends.cuda_memory"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    backend = importlib.import_module("sedeploy.backends.tensorrt")
    assert str(backend.resolve_batch_profile(None, 16)) == "1:8:16"
    assert importlib.import_module("sedeploy.backends.cuda_memory").nbytes_for((2, 3), "float32") == 24


def test_build_without_tensorrt_names_the_extra(no_gpu_stack: None, tmp_path: Any) -> None:
    with pytest.raises(MissingDependencyError) as caught:
        trt_backend.build_engine(tmp_path / "model.onnx", tmp_path / "model.engine")
    message = str(caught.value)
    assert "tensorrt" in message and "pip install 'sedeploy[tensorrt]'" in message
    assert "\n" not in message


def test_runner_without_tensorrt_names_the_extra(no_gpu_stack: None, tmp_path: Any) -> None:
    from sedeploy.artifacts.manifest import write_manifest

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"a plan")  # the manifest is checked first, so it must describe the file
    write_manifest(make_manifest(engine, kind="engine", engine=None, device={}), engine)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sedeploy\[tensorrt\]'"):
        trt_backend.TensorRTRunner(engine)


def test_cuda_memory_without_pycuda_names_the_extra(no_gpu_stack: None) -> None:
    for allocate in (lambda: cuda_memory.DeviceBuffer(16), lambda: cuda_memory.CudaContext(0)):
        with pytest.raises(MissingDependencyError) as caught:
            allocate()
        assert "pycuda" in str(caught.value) and "sedeploy[tensorrt]" in str(caught.value)


def test_availability_says_why_not(no_gpu_stack: None) -> None:
    available, reason = trt_backend.availability()
    assert not available
    assert "pip install 'sedeploy[tensorrt]'" in reason


def test_library_messages_name_parameters_not_cli_flags() -> None:
    """Messages raised in backends/tensorrt/ and cuda_memory/ speak the library's words; the CLI maps them to flags."""
    import ast
    import re
    from pathlib import Path

    import sedeploy.backends.cuda_memory as memory_package
    import sedeploy.backends.tensorrt as tensorrt_package

    flag = re.compile(r"(?<![\w`-])--[a-z][a-z0-9-]*")
    found = []
    for package in (tensorrt_package, memory_package):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    for part in ast.walk(node.exc):
                        if (
                            isinstance(part, ast.Constant)
                            and isinstance(part.value, str)
                            and flag.search(part.value)
                        ):
                            found.append(f"{path.name}:{part.lineno}: {flag.search(part.value).group()}")  # type: ignore[union-attr]
    assert not found, found
