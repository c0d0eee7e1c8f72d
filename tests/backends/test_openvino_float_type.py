"""OpenVINO float type and hint: measured at build unless pinned, recorded in the manifest, used and shown by the
runner; BF16 as a CPU precision, gated against FP32 and refused where the CPU has no BF16 units (the cpuinfo of a
VNNI-only Xeon stands in for such a CPU)."""

from __future__ import annotations

import queue
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sedeploy
from sedeploy import host
from sedeploy.artifacts.manifest import read_manifest, write_manifest
from sedeploy.bench import bench
from sedeploy.build import BuildOptions, build_engine
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.measure import runtime_choice
from sedeploy.measure.runtime_choice import describe_choice
from sedeploy.verify import verify

openvino = pytest.importorskip(
    "openvino", reason="OpenVINO is not installed: pip install 'sedeploy[openvino]'"
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cpuinfo"
HAS_BF16 = host.onednn_units(host.matrix_units()).best("bf16") is not None and "BF16" in set(
    openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
)
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no BF16 units OpenVINO can use")


@dataclass(frozen=True)
class PinnedOptions(BuildOptions):
    """BuildOptions with the two OpenVINO pins the CLI wiring adds (``--float-type``, ``--hint``)."""

    float_type: str | None = None
    hint: str | None = None


@pytest.fixture
def digits_onnx(trained_digits, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    return model


@pytest.fixture
def vnni_only_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sees the recorded cpuinfo of an Intel Xeon with AVX-512 VNNI and no BF16 units."""
    text = (FIXTURES / "intel_xeon_cascade_lake_vnni.txt").read_text(encoding="utf-8")
    monkeypatch.setattr(host, "_cpuinfo", lambda: text)


def test_int8_ir_measures_its_float_type_and_hint_and_records_them(trained_digits, digits_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    options = BuildOptions(
        precision="int8", backend="openvino", calib_dir=trained_digits.calib_dir, probe_seconds=0.4
    )
    result = build_engine(digits_onnx, options)
    engine = read_manifest(result.artifact).engine or {}
    choice = engine["runtime_choice"]
    candidates = ("f32", "bf16", "f16") if HAS_BF16 else ("f32", "f16")
    assert engine["inference_precision"] in candidates and engine["performance_hint"] in (
        "latency",
        "throughput",
    )
    assert choice["batches"] == [1, 8] and choice["hint"]["decided"] == "measured"
    measured = choice["hint"]["images_per_s"]
    assert set(measured) == {"latency", "throughput"} and all(
        r > 0 for by in measured.values() for r in by.values()
    )
    if HAS_BF16:  # f32 and bf16 at least: both were timed, and the record says which won
        rates = choice["float_type"]["images_per_s"]
        assert choice["float_type"]["decided"] == "measured" and {"f32", "bf16"} <= set(rates)
    assert f"int8 IR runs in {engine['inference_precision']}" in result.backend_reason
    switch = engine.get("throughput_from_batch")  # present only where THROUGHPUT won from batch 8 alone
    assert switch in (None, 8)
    with sedeploy.load(result.artifact) as runner:
        assert (
            runner.float_type == engine["inference_precision"] and runner.hint == engine["performance_hint"]
        )
        assert runner.throughput_from_batch == switch
        hints = runner.hint if switch is None else f"{runner.hint}, throughput from batch {switch}"
        assert runner.provider.endswith(f"({hints}, {runner.float_type}: recorded)")


@needs_bf16
def test_int8_ir_with_bf16_floats_passes_verify_with_the_int8_thresholds(
    trained_digits, digits_onnx: Path
) -> None:  # type: ignore[no-untyped-def]
    options = PinnedOptions(
        precision="int8",
        backend="openvino",
        calib_dir=trained_digits.calib_dir,
        float_type="bf16",
        hint="latency",
    )
    result = build_engine(digits_onnx, options)
    engine = read_manifest(result.artifact).engine or {}
    assert (engine["inference_precision"], engine["performance_hint"]) == ("bf16", "latency")
    assert engine["runtime_choice"]["float_type"] == {"decided": "pinned"}
    assert engine["runtime_choice"]["hint"] == {"decided": "pinned"}
    report = verify(result.artifact, data=trained_digits.test_dir)
    assert report.passed and report.precision == "int8", report.to_text()
    with sedeploy.load(result.artifact) as runner:
        assert runner.float_type == "bf16"
    with sedeploy.load(result.artifact, float_type="f32") as runner:  # the caller's pin beats the record
        assert runner.float_type == "f32" and runner.provider.endswith("f32: pinned)")


def test_pinned_f32_is_honoured_recorded_and_survives_a_cpu_without_bf16(
    trained_digits, digits_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    options = PinnedOptions(
        precision="int8",
        backend="openvino",
        calib_dir=trained_digits.calib_dir,
        float_type="f32",
        hint="throughput",
    )
    result = build_engine(digits_onnx, options)
    engine = read_manifest(result.artifact).engine or {}
    assert (engine["inference_precision"], engine["performance_hint"]) == ("f32", "throughput")
    assert "runs in f32 (pinned), throughput hint" in result.backend_reason
    with sedeploy.load(result.artifact) as runner:
        assert (runner.float_type, runner.hint) == ("f32", "throughput")
        logits = runner(trained_digits.test_images[:16])
    assert (logits.argmax(1) == trained_digits.test_labels[:16]).mean() >= 0.8
    text = (FIXTURES / "intel_xeon_cascade_lake_vnni.txt").read_text(encoding="utf-8")
    monkeypatch.setattr(host, "_cpuinfo", lambda: text)
    with pytest.raises(BadInputError, match=r"cannot run float_type 'bf16'.*BF16 none"):
        sedeploy.load(result.artifact, float_type="bf16")


@needs_bf16
def test_bf16_ir_is_gated_against_fp32_and_recorded(trained_digits, digits_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    result = build_engine(
        digits_onnx, BuildOptions(precision="bf16", backend="openvino", calib_dir=trained_digits.calib_dir)
    )
    assert result.artifact.name == "digits.bf16.openvino.xml"
    manifest = read_manifest(result.artifact)
    assert manifest.precision == "bf16" and (manifest.engine or {})["inference_precision"] == "bf16"
    assert manifest.recipe["compress_to_fp16"] is False  # FP32 weights, rounded to bf16 as it runs
    fidelity = result.fidelity
    assert fidelity is not None and fidelity.mean_cosine >= 0.999 and fidelity.top1_agreement >= 0.98
    assert "bf16 IR runs in bf16 (only bf16 applies)" in result.backend_reason
    with sedeploy.load(result.artifact) as runner:
        logits = runner(trained_digits.test_images)
    assert (logits.argmax(1) == trained_digits.test_labels).mean() >= trained_digits.torch_accuracy - 0.01
    report = bench([result.artifact], batches=(2,), iterations=3, rounds=1, warmup=1, probe_seconds=0.1)
    row = report.rows[0]  # divided by the BF16 roof (oneDNN), labelled with this CPU's BF16 unit
    assert row.roof_kind == "bf16" and row.roof_gflops == report.probes["bf16"]
    assert report.probe_labels["bf16"].endswith(str(host.onednn_units(host.matrix_units()).best("bf16")))


def test_bf16_on_a_cpu_without_bf16_units_is_one_line_and_builds_nothing(
    digits_onnx: Path, vnni_only_cpu: None
) -> None:
    with pytest.raises(BadInputError) as caught:
        build_engine(digits_onnx, BuildOptions(precision="bf16", backend="openvino"))
    message = str(caught.value)
    assert "\n" not in message and "no BF16 units" in message and "AVX512-VNNI; BF16 none" in message
    assert "precision='int8'" in message
    assert sorted(path.name for path in digits_onnx.parent.iterdir()) == ["digits.onnx"]


def test_bf16_is_an_openvino_precision_only() -> None:
    with pytest.raises(ConfigError, match="backend='openvino'"):
        BuildOptions(precision="bf16", backend="onnxruntime")
    with pytest.raises(ConfigError, match="backend='openvino'"):
        BuildOptions(precision="bf16")


def test_fp16_ir_on_a_cpu_says_what_it_really_computes_in(digits_onnx: Path) -> None:
    result = build_engine(digits_onnx, PinnedOptions(precision="fp16", backend="openvino", hint="latency"))
    engine = read_manifest(result.artifact).engine or {}
    assert engine["inference_precision"] in ("bf16", "f16")  # an FP16 IR never silently runs in f32
    assert f"fp16 IR runs in {engine['inference_precision']}" in result.backend_reason
    with sedeploy.load(result.artifact) as runner:
        assert runner.float_type == engine["inference_precision"]


def test_unknown_pins_are_refused_naming_the_parameter(digits_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="unknown float_type 'fp8'"):
        build_engine(digits_onnx, PinnedOptions(backend="openvino", float_type="fp8"))
    assert not list(digits_onnx.parent.glob("*.xml"))


def test_the_recorded_choice_reads_as_one_line() -> None:
    rates = {"f32": {"1": 100.0, "8": 100.0}, "bf16": {"1": 150.0, "8": 240.0}}
    engine = {
        "inference_precision": "bf16",
        "performance_hint": "latency",
        "runtime_choice": {
            "float_type": {"decided": "measured", "images_per_s": rates},
            "hint": {"decided": "pinned"},
        },
    }
    assert describe_choice(engine) == "runs in bf16 (measured: 1.90x f32), latency hint (pinned)"
    assert describe_choice({}) == "float type not recorded"


@pytest.mark.parametrize(
    ("bf16_gain", "throughput_gain", "expected"),
    [
        (1.02, 1.0, ("f32", "latency")),
        (1.10, 1.02, ("bf16", "latency")),
        (1.10, 1.20, ("bf16", "throughput")),
    ],
)
def test_a_less_accurate_float_type_or_throughput_must_win_by_the_margin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bf16_gain: float,
    throughput_gain: float,
    expected: tuple[str, str],
) -> None:
    """The decision rule on given timings (what a shared machine measures is not repeatable): most accurate
    first, another float type or THROUGHPUT only when at least MIN_GAIN (5%) faster."""
    xml = tmp_path / "digits.openvino.xml"  # only the timings would open it
    rates = {
        "f32": 100.0,
        "bf16": 100.0 * bf16_gain,
        "f16": 50.0,
        "latency": 100.0,
        "throughput": 100 * throughput_gain,
    }

    def timed(path: Path, configs: dict, batches: tuple[int, ...], seconds: float) -> dict:  # type: ignore[type-arg]
        assert path == xml and seconds == 0.1
        return {name: {batch: rates[name] for batch in batches} for name in configs}

    monkeypatch.setattr(runtime_choice, "_time_configs", timed)
    monkeypatch.setattr(
        runtime_choice, "float_type_candidates", lambda core, device, precision: ("f32", "bf16", "f16")
    )
    choice = runtime_choice.choose_runtime(xml, "int8", (1, 8), 0.1)
    assert (choice["inference_precision"], choice["performance_hint"]) == expected
    assert choice["runtime_choice"]["float_type"]["images_per_s"]["f16"] == {"1": 50.0, "8": 50.0}
    only_one = runtime_choice.choose_runtime(xml, "int8", (1,), 0.1, float_type="f32")
    assert only_one["performance_hint"] == "latency"
    assert only_one["runtime_choice"]["hint"]["decided"] == "batch 1 has nothing to split across streams"


def test_throughput_serves_the_batches_where_it_won(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """THROUGHPUT 1.5x faster at batch 8 but 0.6x at batch 1: LATENCY below 8, THROUGHPUT from 8; asked for 8
    alone, THROUGHPUT for every batch; a win at 4 that is lost again at 8 does not count."""
    per_batch = {"latency": {1: 60.0, 4: 55.0, 8: 50.0}, "throughput": {1: 36.0, 4: 56.0, 8: 75.0}}

    def timed(path: Path, configs: dict, batches: tuple[int, ...], seconds: float) -> dict:  # type: ignore[type-arg]
        return {name: {batch: per_batch[name][batch] for batch in batches} for name in configs}

    monkeypatch.setattr(runtime_choice, "_time_configs", timed)
    xml = tmp_path / "model.openvino.xml"  # only the timings would open it
    both = runtime_choice.choose_runtime(xml, "fp32", (1, 8), 0.1)
    assert (both["performance_hint"], both["throughput_from_batch"]) == ("latency", 8)
    assert runtime_choice.describe_choice(both) == (
        "runs in f32 (only f32 applies), latency hint below batch 8, throughput from it (measured img/s: "
        "batch 1: latency 60, throughput 36; batch 8: latency 50, throughput 75)"
    )
    alone = runtime_choice.choose_runtime(xml, "fp32", (8,), 0.1)
    assert alone["performance_hint"] == "throughput" and "throughput_from_batch" not in alone
    per_batch["throughput"][4] = 60.0  # 1.09x at 4: THROUGHPUT from 4 on
    assert runtime_choice.choose_runtime(xml, "fp32", (1, 4, 8), 0.1)["throughput_from_batch"] == 4
    per_batch["throughput"][8] = 50.0  # no longer faster at 8: nowhere from some batch on
    nowhere = runtime_choice.choose_runtime(xml, "fp32", (1, 4, 8), 0.1)
    assert nowhere["performance_hint"] == "latency" and "throughput_from_batch" not in nowhere


def _tiny_ir(folder: Path) -> Path:
    """A real FP32 IR of a four-channel conv classifier on 3x8x8 images (no manifest: the probe needs none)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sedeploy.backends.openvino import build_ir

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    source = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), source)
    xml = folder / "tiny.openvino.xml"
    build_ir(source, xml, "fp32")
    return xml


def test_the_runtime_choice_times_through_the_one_timing_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint probe of a real IR runs in ``measure.timing.time_interleaved`` (A B A B, median call), with a
    runner per hint, and records the median rates that loop measured."""
    from sedeploy.backends.openvino import OpenVinoRunner
    from sedeploy.measure import timing

    xml = _tiny_ir(tmp_path)
    seen: list[tuple[dict[str, Any], tuple[int, ...], dict[str, Any], timing.Timings]] = []

    def spy(runners: dict[str, Any], batches: tuple[int, ...], **settings: Any) -> timing.Timings:
        timings = timing.time_interleaved(runners, batches, **settings)
        seen.append((dict(runners), tuple(batches), settings, timings))
        return timings

    monkeypatch.setattr(runtime_choice, "time_interleaved", spy)
    choice = runtime_choice.choose_runtime(xml, "fp32", (1, 2), 0.05)
    assert len(seen) == 1  # fp32 has one float type: only the hints are timed
    runners, batches, settings, timings = seen[0]
    assert batches == (1, 2) and set(runners) == {"latency", "throughput"}
    for name, runner in runners.items():
        assert isinstance(runner, OpenVinoRunner) and (runner.hint, runner.float_type) == (name, "f32")
        assert runner._compiled is None  # closed after the probe
    assert settings["rounds"] == runtime_choice.PROBE_ROUNDS and settings["seconds"] == 0.05
    assert settings["max_calls"] == runtime_choice.MAX_PROBE_CALLS and settings["min_calls"] == 3
    for key, calls in timings.calls.items():
        assert (
            3 * runtime_choice.PROBE_ROUNDS
            <= len(calls)
            <= runtime_choice.MAX_PROBE_CALLS * runtime_choice.PROBE_ROUNDS
        ), key
    recorded = choice["runtime_choice"]["hint"]["images_per_s"]
    assert recorded == {
        name: {str(batch): round(timings.median_rate(name, batch), 2) for batch in (1, 2)} for name in runners
    }
    assert choice["performance_hint"] in ("latency", "throughput") and choice["inference_precision"] == "f32"


def test_float_types_map_onto_precision_names_in_one_place() -> None:
    from sedeploy.artifacts.precision import FLOAT_TYPES, float_type_precision, precision_float_type

    assert FLOAT_TYPES == ("f32", "bf16", "f16")  # most accurate first: the choice relies on the order
    assert [float_type_precision(kind) for kind in FLOAT_TYPES] == ["fp32", "bf16", "fp16"]
    assert all(precision_float_type(float_type_precision(kind)) == kind for kind in FLOAT_TYPES)
    assert precision_float_type("int8") == "f32"  # INT8's float layers are built to run in f32
    with pytest.raises(KeyError):
        float_type_precision("fp16")  # a precision name is not a float type


class _CountingQueue(queue.Queue):  # type: ignore[type-arg]
    """An infer-request pool that counts how often a call takes from it."""

    def __init__(self, source: queue.Queue) -> None:  # type: ignore[type-arg]
        super().__init__()
        self.taken = 0
        while not source.empty():
            self.put(source.get())

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.taken += 1
        return super().get(*args, **kwargs)


def test_a_recorded_throughput_switch_runs_each_call_on_the_compile_measured_for_its_size(
    trained_digits, digits_onnx: Path
) -> None:  # type: ignore[no-untyped-def]
    result = build_engine(digits_onnx, PinnedOptions(backend="openvino", float_type="f32", hint="latency"))
    manifest = read_manifest(result.artifact)
    write_manifest(
        replace(manifest, engine={**(manifest.engine or {}), "throughput_from_batch": 4}), result.artifact
    )
    images = trained_digits.test_images[:8]
    with sedeploy.load(result.artifact, hint="latency") as pinned:  # a pinned hint compiles one model
        assert pinned.throughput_from_batch is None and pinned._throughput is None
        expected = pinned(images)
    with sedeploy.load(result.artifact) as runner:
        assert runner.hint == "latency" and runner.throughput_from_batch == 4
        assert runner.provider == "OpenVINO CPU (latency, throughput from batch 4, f32: recorded)"
        assert runner._compiled is not None and runner._throughput is not None
        latency_pool = _CountingQueue(runner._compiled.requests)
        throughput_pool = _CountingQueue(runner._throughput.requests)
        runner._compiled.requests, runner._throughput.requests = latency_pool, throughput_pool
        small, large = runner(images[:3]), runner(images)
        assert (latency_pool.taken, throughput_pool.taken) == (1, runner._throughput.streams)
    np.testing.assert_allclose(large, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(small, expected[:3], rtol=1e-5, atol=1e-5)
    for bad in (1, "8", True):
        write_manifest(
            replace(manifest, engine={**(manifest.engine or {}), "throughput_from_batch": bad}),
            result.artifact,
        )
        with pytest.raises(BadInputError, match="throughput_from_batch"):
            sedeploy.load(result.artifact)
