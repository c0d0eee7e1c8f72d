"""Why ONNX Runtime's INT8 SE-ResNet-50 stays far below ONNX Runtime's own INT8 GEMM roof (issue 21, item 6).

Usage:
    python benchmarks/ort_int8_amx.py [--seconds S] [--rounds R] [--rebuild]

Writes benchmarks/results/ort_int8_amx.{md,json}. On sedeploy's ``--target cpu``
INT8 file of SE-ResNet-50 at 224 (cached in benchmarks/.work by cpu_engines.py's
``prepare``), it measures, in one run, on whatever CPU it runs:

1. where the kernel time goes (ONNX Runtime's profiler, per op type), at batch 1 and 8;
2. every QLinearConv's rate (GOP/s from its shapes and kernel time), in two weight forms that
   hold the same numbers: as built (int8 weights, zero point 0: ONNX Runtime's symmetric
   "ConvSym" kernels) and shifted (the same weights stored as q - 1 with zero point -1:
   ONNX Runtime's im2col + MLAS QGEMM path, which is the one with an AMX kernel);
3. whole-model images/s of the forms a graph or threading change could give, interleaved
   with ``sedeploy.bench`` (median of rounds; roofs probed between them):
   as built; shifted weights everywhere; shifted only where step 2 measured them faster at both
   batches; the SE scale's broadcast made a single span (``Expand`` of the gate, so
   ONNX Runtime threads the multiply); split-batch (``sessions=2``); the SE path in float
   (``quantize_se=False``).

Every rewritten graph is checked to give bit-identical logits to the file as built before it is
timed. SE-ResNet-50's weights are random and its calibration images synthetic: speed only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cpu_engines  # noqa: E402 - the shared SE-ResNet-50 builds in benchmarks/.work
import edge_cpu  # noqa: E402

import sedeploy  # noqa: E402
from sedeploy.backends.onnxruntime import (  # noqa: E402
    OnnxRuntimeRunner,
    onnxruntime,
    profile_kernel_events,
    profile_ops,
    session_options,
)
from sedeploy.bench import Candidate, bench  # noqa: E402
from sedeploy.build import BuildOptions, build_engine  # noqa: E402
from sedeploy.host import cpu_model, describe_isa, matrix_units  # noqa: E402

WORK = HERE / ".work" / "ort_int8_amx"
RESULTS = HERE / "results"
BATCHES = (1, 8)
FASTER_BY = 1.10
"""A layer takes the shifted form in the "per layer" variant only if that form was this much faster at every batch."""

ANALYSIS_MARK = (
    "<!-- analysis: written by hand from the run above; the script keeps it when it rewrites the tables -->"
)

logger = logging.getLogger("ort_int8_amx")


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def shift_conv_weights(model: onnx.ModelProto, only: set[str] | None = None) -> int:
    """Store each Conv's int8 weights as q - 1 with zero point -1 (the same real values); return the count.

    Symmetric weights lie in [-127, 127], so q - 1 fits int8 exactly. ``only``: Conv node names to change.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    producers = _producers(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or (only is not None and node.name not in only):
            continue
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
            continue
        weights = numpy_helper.to_array(initializers[dequantize.input[0]])
        zero_point = numpy_helper.to_array(initializers[dequantize.input[2]])
        if weights.dtype != np.int8 or zero_point.any() or weights.min() < -127:
            raise SystemExit(
                f"{node.name}: weights are not symmetric int8; this script expects sedeploy's cpu INT8"
            )
        shifted = (weights.astype(np.int16) - 1).astype(np.int8)
        initializers[dequantize.input[0]].CopyFrom(numpy_helper.from_array(shifted, dequantize.input[0]))
        initializers[dequantize.input[2]].CopyFrom(
            numpy_helper.from_array(np.full(zero_point.shape, -1, np.int8), dequantize.input[2])
        )
        changed += 1
    return changed


def expand_se_gate(model: onnx.ModelProto) -> int:
    """Give each SE scale Mul a gate of the feature map's own shape (``Expand`` on the quantized gate).

    ONNX Runtime threads a binary op only when its output is one span; the SE scale's [N,C,1,1] gate
    against [N,C,H,W] is many spans, so its QLinearMul runs on one thread.
    """
    graph = model.graph
    producers = _producers(model)
    changed = 0
    for node in list(graph.node):
        if node.op_type != "Mul":
            continue
        sources = [producers.get(name) for name in node.input]
        if any(source is None or source.op_type != "DequantizeLinear" for source in sources):
            continue
        gate_side = next(
            (
                index
                for index, source in enumerate(sources)
                if source is not None
                and (quantize := producers.get(source.input[0])) is not None
                and (origin := producers.get(quantize.input[0])) is not None
                and origin.op_type == "Sigmoid"
            ),
            None,
        )
        if gate_side is None:
            continue
        gate, feature = sources[gate_side], sources[1 - gate_side]
        assert gate is not None and feature is not None
        shape, expanded = f"{node.name}_feature_shape", f"{node.name}_gate_expanded"
        position = list(graph.node).index(gate)
        graph.node.insert(position, helper.make_node("Expand", [gate.input[0], shape], [expanded]))
        graph.node.insert(position, helper.make_node("Shape", [feature.input[0]], [shape]))
        gate.input[0] = expanded
        changed += 1
    return changed


def layer_rates(path: Path, batch: int, calls: int = 12) -> dict[str, dict[str, Any]]:
    """Per QLinearConv: median kernel ms over ``calls`` and GOP/s from its shapes (ONNX Runtime's profiler)."""
    kernels = {
        node.name: list(next(a.ints for a in node.attribute if a.name == "kernel_shape"))
        for node in onnx.load(str(path), load_external_data=False).graph.node
        if node.op_type == "Conv"
    }
    feed = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    durations: dict[str, list[float]] = defaultdict(list)
    args: dict[str, Any] = {}
    for event in profile_kernel_events(path, feed, calls):
        node = event["name"][: -len("_kernel_time")]
        durations[node].append(event["dur"])
        args[node] = event["args"]
    rows = {}
    for node, times in durations.items():
        if args[node].get("op_name") != "QLinearConv":
            continue
        source = node.split("_token_")[0]
        x_shape = next(iter(args[node]["input_type_shape"][0].values()))
        y_shape = next(iter(args[node]["output_type_shape"][0].values()))
        kernel = kernels.get(source, [1, 1])
        macs = int(np.prod(y_shape)) * int(x_shape[-1]) * int(np.prod(kernel))
        ms = float(np.median(times)) / 1000.0
        rows[source] = {
            "ms": ms,
            "gops": 2.0 * macs / ms / 1e6,
            "kernel": "x".join(map(str, kernel)),
            "in": list(x_shape),
            "out": list(y_shape),
        }
    return rows


def op_shares(path: Path, batch: int, runs: int = 20) -> list[dict[str, Any]]:
    """Kernel ms per call and share of kernel time per op type (ONNX Runtime's profiler)."""
    feed = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    seconds = profile_ops(str(path), feed, runs)
    total = sum(seconds.values())
    return [{"op": op, "ms": 1e3 * value / runs, "share": value / total} for op, value in seconds.items()]


def same_logits(reference: Path, candidates: dict[str, Path]) -> dict[str, float]:
    ort = onnxruntime()
    feed = np.random.default_rng(1).standard_normal((8, 3, 224, 224)).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: feed})[0])

    expected = run(reference)
    return {label: float(np.abs(run(path) - expected).max()) for label, path in candidates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per variant and batch")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached artifacts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    units = matrix_units()
    WORK.mkdir(parents=True, exist_ok=True)
    paths = cpu_engines.prepare(args.rebuild, units.best("bf16") is not None)
    built = paths["ort-int8"]

    def float_se() -> Path:
        options = BuildOptions(
            precision="int8",
            backend="onnxruntime",
            target="cpu",
            quantize_se=False,
            calib_dir=HERE / ".work" / "calib",
            calib_size=edge_cpu.CALIB_SIZE,
            calib_method="minmax",
        )
        source = WORK / "se_resnet50.onnx"
        if not source.is_file():
            source.write_bytes(paths["ort-fp32"].read_bytes())
        return build_engine(source, options).artifacts[0]

    seconds: dict[str, float] = {}
    float_se_path = edge_cpu._cached(WORK, "ort-int8-float-se", float_se, seconds, args.rebuild)

    shifted_path = WORK / "shifted.onnx"
    model = onnx.load(str(built))
    shifted_count = shift_conv_weights(model)
    onnx.save(model, str(shifted_path))
    expanded_path = WORK / "expanded_gate.onnx"
    model = onnx.load(str(built))
    expanded_count = expand_se_gate(model)
    onnx.save(model, str(expanded_path))

    logger.info("profiling every QLinearConv in both weight forms")
    layers = {
        (form, batch): layer_rates(path, batch)
        for batch in BATCHES
        for form, path in (("as built", built), ("shifted", shifted_path))
    }
    faster = {
        layer
        for layer in layers[("as built", 1)]
        if all(
            layers[("shifted", batch)].get(layer, {}).get("ms", np.inf) * FASTER_BY
            <= layers[("as built", batch)][layer]["ms"]
            for batch in BATCHES
        )
    }
    per_layer_path = WORK / "shifted_where_faster.onnx"
    model = onnx.load(str(built))
    per_layer_count = shift_conv_weights(model, only=faster)
    onnx.save(model, str(per_layer_path))

    rewritten = {
        "shifted": shifted_path,
        "shifted where faster": per_layer_path,
        "expanded gate": expanded_path,
    }
    differences = same_logits(built, rewritten)
    for label, difference in differences.items():
        if difference != 0.0:
            raise SystemExit(f"{label}: logits differ from the file as built by {difference}; not timing it")

    def runner(path: Path, **options: Any) -> Callable[[int | None], Any]:
        return lambda threads: OnnxRuntimeRunner(path, verify_hash=False, threads=threads, **options)

    variants: list[tuple[str, str, Callable[[int | None], Any]]] = [
        ("as built", "sedeploy's `--target cpu` INT8 (symmetric int8 weights)", runner(built)),
        (
            "shifted weights",
            f"all {shifted_count} Conv weights as q-1 with zero point -1 (im2col + MLAS QGEMM)",
            runner(shifted_path),
        ),
        (
            "shifted where faster",
            f"{per_layer_count} Conv(s) shifted, those >= {FASTER_BY:.2f}x faster shifted at batch 1 and 8",
            runner(per_layer_path),
        ),
        (
            "SE gate expanded",
            f"{expanded_count} SE gates Expanded to the feature map's shape (one-span QLinearMul)",
            runner(expanded_path),
        ),
        (
            "split-batch",
            "the file as built, sessions=2 (two 1-thread sessions, half a batch each)",
            runner(built, sessions=2),
        ),
        ("SE in float", "INT8 with quantize_se=False (SE excitation path in float)", runner(float_se_path)),
    ]
    candidates = [
        Candidate(path=label, label=label, open=opener, precision="int8") for label, _, opener in variants
    ]
    load_before = os.getloadavg()
    report = bench(candidates, BATCHES, duration=args.seconds, rounds=args.rounds)
    load_after = os.getloadavg()
    profiles = {
        (label, batch): op_shares(path, batch) for label, path in (("as built", built),) for batch in BATCHES
    }
    write_results(
        report, variants, layers, faster, profiles, units, load_before, load_after, args, differences
    )


def _row(report: Any, label: str, batch: int) -> Any:
    return next(row for row in report.rows if row.label == label and row.stats.batch == batch)


def _rate(report: Any, label: str, batch: int) -> dict[str, float]:
    stats = _row(report, label, batch).stats
    return {"img_s": stats.images_per_s, "p50_img_s": stats.median_images_per_s}


def write_results(
    report: Any,
    variants: list[tuple[str, str, Callable[[int | None], Any]]],
    layers: dict[tuple[str, int], dict[str, dict[str, Any]]],
    faster: set[str],
    profiles: dict[tuple[str, int], list[dict[str, Any]]],
    units: Any,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    args: argparse.Namespace,
    differences: dict[str, float],
) -> None:
    roofs = report.probes
    cpu = cpu_model()
    lines = [
        "# ONNX Runtime INT8 on this CPU: where SE-ResNet-50's time goes, and what a graph change buys (issue 21, item 6)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores; ISA: {describe_isa()}. "
        f"onnxruntime {onnxruntime().__version__}, sedeploy {sedeploy.__version__}.",
        f"Load average before/after the timed run: {' '.join(f'{x:.2f}' for x in load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in load_after)}.",
        f"Command: `python benchmarks/ort_int8_amx.py --seconds {args.seconds:g} --rounds {args.rounds}`; "
        "SE-ResNet-50 at 224, random weights, synthetic calibration (speed only).",
        "",
        "## Whole model, interleaved (`sedeploy.bench`)",
        "",
        "img/s from the mean call; *p50 img/s* from the median call (robust to other processes' bursts).",
        "",
        "| variant | what changes | b1 img/s | b1 p50 img/s | b1 vs as built (p50) | b8 img/s | b8 p50 img/s | "
        "b8 vs as built (p50) | b8 share of INT8 roof |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {batch: _rate(report, "as built", batch) for batch in BATCHES}
    results: dict[str, Any] = {"variants": {}, "roofs": roofs}
    for label, what, _ in variants:
        rates = {batch: _rate(report, label, batch) for batch in BATCHES}
        share = _row(report, label, 8).roof_share
        lines.append(
            f"| {label} | {what} | {rates[1]['img_s']:.1f} | {rates[1]['p50_img_s']:.1f} | "
            f"{rates[1]['p50_img_s'] / base[1]['p50_img_s']:.2f}x | {rates[8]['img_s']:.1f} | "
            f"{rates[8]['p50_img_s']:.1f} | {rates[8]['p50_img_s'] / base[8]['p50_img_s']:.2f}x | "
            f"{'-' if share is None else f'{share:.1%}'} |"
        )
        results["variants"][label] = {"what": what, "rates": rates}
    lines += [
        "",
        "Roofs (highest probe interleaved with the rows): "
        + "; ".join(f"{kind} {value:.0f}" for kind, value in roofs.items())
        + ". Rewritten graphs' logits against the file as built, batch 8: "
        + ", ".join(f"{label} max |diff| {value:g}" for label, value in differences.items())
        + ".",
        "",
        "## Kernel time per op type, the file as built (ONNX Runtime's profiler, 20 calls)",
        "",
        "| op type | b1 ms | b1 share | b8 ms | b8 share |",
        "|---|---|---|---|---|",
    ]
    ops1 = {row["op"]: row for row in profiles[("as built", 1)]}
    ops8 = {row["op"]: row for row in profiles[("as built", 8)]}
    for op in sorted(ops8, key=lambda name: -ops8[name]["ms"])[:8]:
        one = ops1.get(op, {"ms": 0.0, "share": 0.0})
        lines.append(
            f"| {op} | {one['ms']:.2f} | {one['share']:.1%} | {ops8[op]['ms']:.2f} | {ops8[op]['share']:.1%} |"
        )
    lines += [
        "",
        "## QLinearConv by kernel size: summed kernel ms and GOP/s, both weight forms",
        "",
        "| kernel | batch | layers | as built ms | as built GOP/s | shifted ms | shifted GOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    results["layers"] = {f"{form} b{batch}": rows for (form, batch), rows in layers.items()}
    for batch in BATCHES:
        groups: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for layer, row in layers[("as built", batch)].items():
            other = layers[("shifted", batch)].get(layer)
            if other is None:
                continue
            group = groups[row["kernel"] if row["out"][1] > 1 else "1x1 (SE FC)"]
            group["layers"] += 1
            group["ops"] += row["gops"] * row["ms"] * 1e6
            group["built"] += row["ms"]
            group["shifted"] += other["ms"]
        for kernel, group in sorted(groups.items()):
            lines.append(
                f"| {kernel} | {batch} | {group['layers']:.0f} | {group['built']:.2f} | "
                f"{group['ops'] / group['built'] / 1e6:.0f} | {group['shifted']:.2f} | "
                f"{group['ops'] / group['shifted'] / 1e6:.0f} |"
            )
    lines += [
        "",
        f"Layers the per-layer variant shifted ({len(faster)}): {', '.join(sorted(faster)) or 'none'}.",
        "",
    ]
    target = RESULTS / "ort_int8_amx.md"
    kept = ""
    if target.is_file() and ANALYSIS_MARK in target.read_text():
        kept = target.read_text().split(ANALYSIS_MARK, 1)[1]
    target.write_text("\n".join(lines) + "\n" + ANALYSIS_MARK + kept)
    (RESULTS / "ort_int8_amx.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
