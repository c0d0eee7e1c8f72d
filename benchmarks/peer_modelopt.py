"""sedeploy's tensorrt INT8 flavour beside NVIDIA's TensorRT Model Optimizer (ModelOpt) ONNX PTQ, on the shipped digits model.

    python -m venv /tmp/modelopt-venv && /tmp/modelopt-venv/bin/pip install "nvidia-modelopt[onnx]==0.47.0"
    python benchmarks/peer_modelopt.py --modelopt-python /tmp/modelopt-venv/bin/python

ModelOpt pulls onnxruntime-gpu (and torch with CUDA), which must never share an
environment with ``onnxruntime``: it runs in its own virtual environment, as a
subprocess (``python -m modelopt.onnx.quantization ... --calibration_eps cpu``),
on the same preprocessed calibration images sedeploy calibrates on. Everything
else (the sedeploy builds, the comparison) runs here on ONNX Runtime's CPU
provider, at optimization level ``disable`` (the graphs' own numerics) and
``all`` (what ONNX Runtime itself runs). Writes ``benchmarks/results/peer_modelopt.md``
and ``.json``: Q/DQ inputs by consumer op type, SE-path handling, the
high-precision type, file size, and fidelity on the held-out digits (accuracy,
agreement, min/mean cosine against FP32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.build import BuildOptions, build_engine
from sedeploy.compare import compare_logits, top1_accuracy
from sedeploy.data import load_image_set, preprocessing_for
from sedeploy.demo import find_example
from sedeploy.export import export_onnx
from sedeploy.graphs.se_blocks import find_se_blocks, graph_with_node_names
from sedeploy.host import describe_machine

RESULTS = Path(__file__).parent / "results"
_TYPES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}


def _modelopt(python: str, source: Path, calibration: Path, output: Path, method: str) -> float:
    started = time.perf_counter()
    command = [
        python,
        "-m",
        "modelopt.onnx.quantization",
        f"--onnx_path={source}",
        "--quantize_mode=int8",
        f"--calibration_data_path={calibration}",
        f"--calibration_method={method}",
        "--calibration_eps",
        "cpu",
        f"--output_path={output}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not output.is_file():
        raise SystemExit(f"ModelOpt failed ({done.returncode}): {done.stderr.strip().splitlines()[-5:]}")
    return time.perf_counter() - started


def _describe(path: Path, source: onnx.ModelProto) -> dict[str, Any]:
    """Q/DQ placement and typing of one INT8 file, by the op types that read a DequantizeLinear output."""
    model = onnx.load(str(path))
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            if name in producers and producers[name].op_type == "DequantizeLinear":
                consumers[node.op_type] += 1
    se_names = {name for block in find_se_blocks(graph_with_node_names(source)) for name in block}
    se_quantized = sorted(
        {
            node.op_type
            for node in model.graph.node
            if node.name in se_names
            and any(
                name in producers and producers[name].op_type == "DequantizeLinear" for name in node.input
            )
        }
    )
    floats = Counter(_TYPES.get(init.data_type, "") for init in model.graph.initializer)
    float_type = "fp16" if floats.get("fp16") else "fp32"
    adds = [node for node in model.graph.node if node.op_type == "Add"]
    conv_side_float = sum(
        any(producers.get(name) is not None and producers[name].op_type == "Conv" for name in add.input)
        for add in adds
    )
    return {
        "file": path.name,
        "size_kb": round(path.stat().st_size / 1024, 1),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "dequantized_inputs_by_op": dict(sorted(consumers.items())),
        "quantize_nodes": sum(node.op_type == "QuantizeLinear" for node in model.graph.node),
        "se_path_quantized_ops": se_quantized,
        "high_precision": float_type,
        "adds_with_float_conv_side": f"{conv_side_float}/{len(adds)}",
        "keeps_sedeploy_metadata": any(p.key.startswith("sedeploy.") for p in model.metadata_props),
    }


def _fidelity(path: Path, images: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    figures = {}
    for level in ("disable", "all"):
        session = ort_backend.create_session(path, ["CPUExecutionProvider"], optimization_level=level)
        logits = session.run(None, {session.get_inputs()[0].name: images})[0].astype(np.float32)
        comparison = compare_logits(reference, logits)
        figures[level] = {
            "accuracy": round(top1_accuracy(logits, labels), 5),
            "top1_agreement": round(comparison.top1_agreement, 5),
            "mean_cosine": round(comparison.mean_cosine, 6),
            "min_cosine": round(comparison.min_cosine, 6),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modelopt-python", required=True, help="python of the virtual environment with ModelOpt"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "peer_modelopt.md")
    args = parser.parse_args()
    example = find_example()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peer-modelopt-") as folder:
        work = Path(folder)
        source_path = export_onnx(
            example.arch,
            weights=example.weights,
            img_size=example.img_size,
            labels=example.labels,
            output=work / "digits.onnx",
        ).path
        source = onnx.load(str(source_path))
        preprocessing, channels = preprocessing_for(source_path)
        calibration = load_image_set(example.calibration, preprocessing, channels, limit=512)
        held_out = load_image_set(example.heldout, preprocessing, channels)
        assert held_out.labels is not None
        images = np.ascontiguousarray(held_out.images, np.float32)
        reference = ort_backend.create_session(source_path, ["CPUExecutionProvider"]).run(
            None, {"input": images}
        )[0]
        calibration_npy = work / "calibration.npy"
        np.save(calibration_npy, np.ascontiguousarray(calibration.images, np.float32))
        candidates: list[tuple[str, Path, float]] = []
        for method in ("minmax", "entropy"):
            started = time.perf_counter()
            built = build_engine(
                source_path,
                BuildOptions(
                    precision="int8",
                    backend="onnxruntime",
                    target="tensorrt",
                    calib_method=method,
                    calib_dir=example.calibration,
                ),
                output=work / f"sedeploy-{method}.onnx",
            )
            candidates.append(
                (f"sedeploy tensorrt flavour, {method}", built.artifacts[0], time.perf_counter() - started)
            )
        for method in ("max", "entropy"):
            output = work / f"modelopt-{method}.onnx"
            seconds = _modelopt(args.modelopt_python, source_path, calibration_npy, output, method)
            candidates.append((f"ModelOpt 0.47 int8, {method}", output, seconds))
        for name, path, seconds in candidates:
            rows.append(
                {
                    "tool": name,
                    "seconds": round(seconds, 1),
                    **_describe(path, source),
                    "fidelity": _fidelity(path, images, held_out.labels, reference),
                }
            )
        fp32_accuracy = top1_accuracy(reference, held_out.labels)
    machine = describe_machine()
    record = {
        "machine": machine,
        "model": "shipped digits SE-ResNet (models/digits_se_resnet), 32x32 grayscale",
        "held_out_images": len(images),
        "calibration_images": len(calibration.images),
        "fp32_accuracy": fp32_accuracy,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# sedeploy's tensorrt INT8 flavour beside ModelOpt ONNX PTQ (digits SE-ResNet)",
        "",
        f"Machine: {machine['description']}. Written by `benchmarks/peer_modelopt.py`; ModelOpt ran in its own "
        "virtual environment with `--calibration_eps cpu`. Fidelity on ONNX Runtime's CPU provider against FP32, "
        f"{len(images)} held-out digits (FP32 accuracy {100 * fp32_accuracy:.2f}%), at optimization level "
        "`disable` (the graph's own numerics) / `all`.",
        "",
        "| tool | float layers | opset | Q/DQ'd inputs by op | SE path quantized | residual adds, conv side float | "
        "size KB | accuracy | agreement | min cosine (disable / all) | mean cosine (disable) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        off, on = row["fidelity"]["disable"], row["fidelity"]["all"]
        by_op = ", ".join(f"{op} {count}" for op, count in row["dequantized_inputs_by_op"].items())
        lines.append(
            f"| {row['tool']} | {row['high_precision']} | {row['opset']} | {by_op} | "
            f"{', '.join(row['se_path_quantized_ops']) or 'no (float)'} | {row['adds_with_float_conv_side']} | "
            f"{row['size_kb']} | {100 * off['accuracy']:.2f}% | {100 * off['top1_agreement']:.2f}% | "
            f"{off['min_cosine']:.5f} / {on['min_cosine']:.5f} | {off['mean_cosine']:.6f} |"
        )
    lines += [
        "",
        "sedeploy keeps its metadata in the file; ModelOpt's output "
        + ("keeps it." if all(row["keeps_sedeploy_metadata"] for row in rows) else "drops it."),
    ]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
