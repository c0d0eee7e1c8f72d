"""The precision audit per backend and ``sedeploy inspect``: what each layer runs in after the backend optimised it."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sedeploy.artifacts.manifest import read_manifest, write_manifest
from sedeploy.backends.audit import (
    PrecisionAudit,
    audit,
    audit_gate,
    audit_onnxruntime,
    source_layers,
    tensorrt_precisions,
)
from sedeploy.build import BuildOptions, build_engine
from sedeploy.files import sha256_of_file
from sedeploy.inspect import inspect_artifact
from sedeploy.precision import PrecisionError


@pytest.fixture(scope="module")
def builds(trained_digits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The digits model built as INT8 (cpu flavour) and FP16 for ONNX Runtime, and INT8 and FP16 for OpenVINO."""
    folder = tmp_path_factory.mktemp("audit")
    model = folder / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    calib = trained_digits.calib_dir
    built = {"source": model}
    cpu = build_engine(
        model, BuildOptions(precision="int8", backend="onnxruntime", target="cpu", calib_dir=calib)
    )
    built["int8-cpu"], built["int8-cpu.ort"] = cpu.artifacts
    built["fp16"] = build_engine(model, BuildOptions(precision="fp16", backend="onnxruntime")).artifact
    built["ov-int8"] = build_engine(
        model, BuildOptions(precision="int8", backend="openvino", calib_dir=calib)
    ).artifact
    built["ov-fp16"] = build_engine(model, BuildOptions(precision="fp16", backend="openvino")).artifact
    return built


def test_source_layers_count_the_macs_of_every_conv_and_gemm(builds: dict[str, Path]) -> None:
    proto = onnx.load(str(builds["source"]))
    layers = source_layers(proto)
    assert {layer.op_type for layer in layers} == {"Conv", "Gemm"}
    assert len(layers) == sum(node.op_type in ("Conv", "Gemm") for node in proto.graph.node)
    stem = layers[0]  # 7x7 conv, 1 -> 16 channels at 32x32, stride 1
    weight = next(init for init in proto.graph.initializer if init.name == "conv1.weight")
    assert stem.macs == 16 * 32 * 32 * int(np.prod(weight.dims[1:]))
    head = next(layer for layer in layers if layer.op_type == "Gemm")
    assert head.macs == 64 * 10


def test_cpu_flavour_runs_at_least_90_percent_int8_on_onnxruntime(builds: dict[str, Path]) -> None:
    for artifact in (builds["int8-cpu"], builds["int8-cpu.ort"]):
        report = audit(artifact)
        print(report.to_text())
        assert report.backend == "onnxruntime"
        assert report.share_of("int8") >= 0.9
        audit_gate("int8", report, 0.9)  # does not raise
        assert all(layer.runs_as.startswith(("QLinearConv", "QGemm")) for layer in report.layers)


def _strip_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph without its Q/DQ: weights dequantized back to float, activation Q->DQ pairs bypassed."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    renamed: dict[str, str] = {}
    kept, new_weights = [], []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            values = initializers[node.input[0]].astype(np.float32)
            scale = initializers[node.input[1]].astype(np.float32)
            zero = initializers[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.float32(0)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            new_weights.append(
                numpy_helper.from_array((values - zero.reshape(shape)) * scale.reshape(shape), node.output[0])
            )
        elif node.op_type == "DequantizeLinear" and producers[node.input[0]].op_type == "QuantizeLinear":
            renamed[node.output[0]] = producers[node.input[0]].input[0]
        elif node.op_type != "QuantizeLinear":
            kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
    for output in graph.output:
        output.name = renamed.get(output.name, output.name)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_weights)
    return stripped


def test_the_audit_catches_an_int8_file_whose_qdq_was_stripped(
    builds: dict[str, Path], tmp_path: Path
) -> None:
    lie = tmp_path / "digits.int8-cpu.onnx"
    onnx.save_model(_strip_qdq(onnx.load(str(builds["int8-cpu"]))), str(lie))
    assert not any(node.op_type.endswith("QuantizeLinear") for node in onnx.load(str(lie)).graph.node)
    manifest = read_manifest(builds["int8-cpu"])
    write_manifest(dataclasses.replace(manifest, artifact_sha256=sha256_of_file(lie)), lie)
    assert read_manifest(lie).precision == "int8"  # the manifest still says int8
    report = audit_onnxruntime(lie, source=builds["source"])
    assert report.share_of("int8") == 0.0
    assert report.shares() == {"fp32": 1.0}
    with pytest.raises(
        PrecisionError, match=r"^asked int8, but only 0% of the MACs run in int8 on onnxruntime"
    ):
        audit_gate("int8", report, 0.9)


def test_an_fp16_build_audits_as_what_the_backend_runs(builds: dict[str, Path]) -> None:
    openvino = audit(builds["ov-fp16"])
    print(openvino.to_text())
    # OpenVINO's CPU runs FP16 as f16 or bf16 (the runner asks for what the CPU has): 16-bit float either way.
    assert set(openvino.shares()) <= {"fp16", "bf16"}
    audit_gate("fp16", openvino, 0.9)
    onnxruntime = audit(builds["fp16"])
    print(onnxruntime.to_text())
    if platform.machine().lower() in ("x86_64", "amd64"):
        # ONNX Runtime's x86 CPU kernels have no FP16 convolution: it casts the graph back to FP32.
        assert onnxruntime.shares() == {"fp32": 1.0}
        with pytest.raises(PrecisionError, match="asked fp16, but only 0%"):
            audit_gate("fp16", onnxruntime, 0.9)


def test_openvino_int8_names_the_layers_it_left_in_float(builds: dict[str, Path]) -> None:
    report = audit(builds["ov-int8"])
    print(report.to_text())
    stem = source_layers(onnx.load(str(builds["source"])))[0].name
    # sedeploy's OpenVINO recipe keeps the stem convolution (on raw pixels) in float on purpose.
    assert stem in report.left_in_float()
    int8_layers = [layer for layer in report.layers if layer.precision == "int8"]
    assert int8_layers and report.share_of("int8") == pytest.approx(
        sum(layer.macs for layer in int8_layers) / report.total_macs
    )
    assert "unknown" not in report.shares()


def test_tensorrt_inspector_json_is_mapped_onto_the_source_layers(builds: dict[str, Path]) -> None:
    """The inspector's documented per-layer JSON (ProfilingVerbosity.DETAILED), written out for this model."""
    proto = onnx.load(str(builds["source"]))
    layers = source_layers(proto)
    convs = [layer for layer in layers if layer.op_type == "Conv"]
    information = {
        "Layers": [
            {
                "Name": f"{convs[0].name} + node_relu",
                "LayerType": "CaskConvolution",
                "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
                "Metadata": f"[ONNX Layer: {convs[0].name}]\x1e[ONNX Layer: node_relu]",
            },
            *[
                {
                    "Name": f"Conv_fused_{index}",
                    "LayerType": "CaskConvolution",
                    "Inputs": [
                        {
                            "Name": "x",
                            "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format",
                        }
                    ],
                    "Metadata": f"[ONNX Layer: {layer.name}]",
                }
                for index, layer in enumerate(convs[1:])
            ],
            {
                "Name": layers[-1].name,
                "LayerType": "gemm",
                "Inputs": [
                    {"Name": "view", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}
                ],
            },
            "a layer listed by name only",
        ]
    }
    report = PrecisionAudit(
        "tensorrt", "digits.engine", tuple(tensorrt_precisions(proto, information)), "test"
    )
    by_name = {layer.name: layer.precision for layer in report.layers}
    assert by_name[convs[0].name] == "fp32"
    assert by_name[layers[-1].name] == "fp16"
    assert all(by_name[layer.name] == "int8" for layer in convs[1:])
    expected = sum(layer.macs for layer in convs[1:]) / sum(layer.macs for layer in layers)
    assert report.share_of("int8") == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["int8-cpu", "int8-cpu.ort", "fp16", "ov-int8", "ov-fp16"])
def test_inspect_every_artifact_kind(builds: dict[str, Path], kind: str) -> None:
    report = inspect_artifact(builds[kind])
    text = report.to_text()
    print(text)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["precision_audit"]["shares"] and data["manifest"]["precision"] == report.precision
    assert data["precision"] in text and "precision audit of" in text
    assert data["backend"] == ("openvino" if kind.startswith("ov-") else "onnxruntime")
    assert data["model"]["arch"] == "se_preact_resnet"
    if kind.startswith("int8"):
        assert "calibration: minmax (symmetric False)" in text  # the default method, with its parameters


def test_shares_format_for_tables_and_nothing_recorded_without_a_build_audit(builds: dict[str, Path]) -> None:
    from sedeploy.backends.audit import format_shares, recorded_shares

    report = audit(builds["ov-int8"])
    text = format_shares(report.shares())
    assert text.startswith("int8 ") and text.endswith("%")
    manifest = read_manifest(builds["ov-int8"])
    record = getattr(
        manifest, "precision_audit", None
    )  # a manifest field once build-engine records the audit
    expected = record["shares"] if record else None
    assert recorded_shares(builds["ov-int8"]) == expected
