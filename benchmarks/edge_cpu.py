"""Edge CPU table (issue 13): SE-ResNet-50 at 224 as FP32 / FP16-or-BF16 / INT8 on ONNX Runtime and OpenVINO.

Usage:
    python benchmarks/edge_cpu.py [--quick] [--seconds S] [--rounds R] [--rebuild]

Writes benchmarks/results/edge_cpu.{md,json}: images/s at batch 1 and 8 for every
path with its ratio to ONNX Runtime FP32 measured in the same interleaved run
(``sedeploy.bench``), OpenVINO INT8 with the THROUGHPUT hint as well, the demo
model's fidelity on every path (``sedeploy.verify`` on models/digits_se_resnet's
held-out images), the per-op profile of ORT INT8 before (SE squeeze as
``ReduceMean``) and after the rewrite (``GlobalAveragePool``), and the machine.

SE-ResNet-50's weights are random (nothing can be downloaded here) and its
calibration images synthetic: its rows are speed only; fidelity comes from the
trained demo model through the same build paths. Builds are cached in
benchmarks/.work/ (git-ignored) and reused while their files exist;
``--rebuild`` starts over. ``--quick`` times fewer seconds per sample.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import sedeploy
from sedeploy.backends.base import Runner
from sedeploy.bench import BenchReport, bench
from sedeploy.build import BuildOptions, build_engine
from sedeploy.export import export_onnx
from sedeploy.graphs.se_blocks import find_se_blocks

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
DEMO_MODEL = REPO / "models" / "digits_se_resnet"
DEMO_CALIBRATION = REPO / "calibration"
CALIB_SIZE = 32
SPEED_CALIBRATION = {"calib_size": CALIB_SIZE, "calib_method": "minmax"}

logger = logging.getLogger("edge_cpu")


def synthetic_images(folder: Path, count: int, size: int = 256, seed: int = 0) -> None:
    """Smooth random RGB fields (closer to photographs' statistics than white noise) as calibration images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(
            folder / f"{index:03d}.png"
        )


def squeeze_as_reduce_mean(source: Path, output: Path) -> int:
    """Undo the SE rewrite: each SE block's ``GlobalAveragePool`` back to ``ReduceMean`` over H, W (keepdims).

    The file the exporter wrote before :mod:`sedeploy.graphs.rewrite` existed, for the before/after profile.
    """
    model = onnx.load(str(source))
    axes_name = "sedeploy_bench_hw_axes"
    pools = {block[0] for block in find_se_blocks(model)}
    count = 0
    for node in model.graph.node:
        if node.name in pools and node.op_type == "GlobalAveragePool":
            node.op_type = "ReduceMean"
            node.input.append(axes_name)
            node.attribute.append(helper.make_attribute("keepdims", 1))
            count += 1
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), axes_name))
    onnx.save(model, str(output))
    return count


@dataclass(frozen=True)
class Artifacts:
    """SE-ResNet-50 artifacts in the work folder, by path name (see :func:`prepare`)."""

    paths: dict[str, Path]
    build_seconds: dict[str, float]


def _cached(
    work: Path, name: str, make: Callable[[], Path], seconds: dict[str, float], rebuild: bool
) -> Path:
    record = work / "builds.json"
    known: dict[str, Any] = json.loads(record.read_text()) if record.is_file() else {}
    entry = known.get(name)
    if not rebuild and entry and Path(entry["path"]).is_file():
        seconds[name] = entry["seconds"]
        return Path(entry["path"])
    logger.info("building %s", name)
    started = time.perf_counter()
    path = make()
    seconds[name] = round(time.perf_counter() - started, 1)
    known = json.loads(record.read_text()) if record.is_file() else {}
    known[name] = {"path": str(path), "seconds": seconds[name]}
    record.write_text(json.dumps(known, indent=2))
    return path


def prepare(work: Path = WORK, rebuild: bool = False, openvino: bool = True) -> Artifacts:
    """Export SE-ResNet-50 and build every path once into ``work``; later calls reuse the files."""
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    calib = work / "calib"
    if rebuild or not calib.is_dir():
        synthetic_images(calib, CALIB_SIZE)
    source = work / "se_resnet50.onnx"

    def export() -> Path:
        return export_onnx("se_resnet50", output=source, max_batch=8).path

    fp32 = _cached(work, "ort-fp32", export, seconds, rebuild)
    paths = {"ort-fp32": fp32}

    def ort_build(precision: str, model: Path = fp32) -> Callable[[], Path]:
        def make() -> Path:
            options = BuildOptions(
                precision=precision,
                backend="onnxruntime",
                target="cpu" if precision == "int8" else None,
                calib_dir=calib if precision == "int8" else None,
                **(SPEED_CALIBRATION if precision == "int8" else {}),
            )
            return build_engine(model, options).artifacts[0]

        return make

    paths["ort-fp16"] = _cached(work, "ort-fp16", ort_build("fp16"), seconds, rebuild)
    paths["ort-int8"] = _cached(work, "ort-int8", ort_build("int8"), seconds, rebuild)
    reduce_mean = work / "se_resnet50_reducemean.onnx"

    def before_rewrite() -> Path:
        squeeze_as_reduce_mean(fp32, reduce_mean)
        return ort_build("int8", reduce_mean)()

    paths["ort-int8-reducemean"] = _cached(work, "ort-int8-reducemean", before_rewrite, seconds, rebuild)
    if openvino:
        for precision in ("fp32", "fp16", "int8"):

            def ov_build(precision: str = precision) -> Path:
                options = BuildOptions(
                    precision=precision,
                    backend="openvino",
                    calib_dir=calib if precision == "int8" else None,
                    calib_size=CALIB_SIZE,
                )
                return build_engine(fp32, options).artifacts[0]

            paths[f"ov-{precision}"] = _cached(work, f"ov-{precision}", ov_build, seconds, rebuild)

        def ov_float_se() -> Path:
            return build_ir_float_se(fp32, calib, work / "se_resnet50.int8-float-se.openvino.xml")

        paths["ov-int8-float-se"] = _cached(work, "ov-int8-float-se", ov_float_se, seconds, rebuild)
    return Artifacts(paths, seconds)


def build_ir_float_se(source: Path, calib: Path, xml: Path) -> Path:
    """OpenVINO INT8 with every SE block (squeeze, both FCs, gate, scale) left in float by NNCF's ignored scope."""
    from sedeploy.artifacts.manifest import write_manifest
    from sedeploy.backends import openvino as ov_backend
    from sedeploy.building import calibration_set_for  # the calibration set exactly as build-engine reads it
    from sedeploy.host import describe_host

    started = time.perf_counter()
    proto = onnx.load(str(source), load_external_data=False)
    stem = [node.name for node in proto.graph.node if node.op_type == "Conv" and node.input[0] == "input"][:1]
    se_nodes = [name for block in find_se_blocks(proto) for name in block]
    options = BuildOptions(precision="int8", backend="openvino", calib_dir=calib, calib_size=CALIB_SIZE)
    images = calibration_set_for(source, options, progress=False).images
    recipe = ov_backend.build_ir(source, xml, "int8", images, stem + se_nodes)
    manifest = ov_backend.ir_manifest(
        xml,
        started,
        {"description": describe_host()},
        source_onnx_sha256="",
        source_metadata=sedeploy.read_metadata(source).to_dict(),
        precision="int8",
        recipe={**recipe, "float_se": True},
        calibration=None,
        build_options={"note": "benchmarks/edge_cpu.py: SE blocks in NNCF's ignored scope"},
        sedeploy_version=sedeploy.__version__,
    )
    write_manifest(manifest, xml)
    return xml


def bench_variants(
    variants: Sequence[tuple[str, Path, dict[str, Any]]],
    batches: Sequence[int],
    seconds: float,
    rounds: int,
    profile: bool = False,
) -> tuple[dict[tuple[str, int], Any], BenchReport]:
    """Interleaved ``sedeploy.bench`` of (label, artifact, runner keywords) variants; rows keyed by (label, batch).

    One file may appear several times with different keywords (the loader hands each
    its own, in bench's loading order); rows come back in bench's order, batch-major.
    """
    queue = [dict(options) for _, _, options in variants]

    def load(path: str, **extra: Any) -> Runner:
        return sedeploy.load(path, **{**queue.pop(0), **extra})

    report = bench(
        [path for _, path, _ in variants],
        batches=batches,
        duration=seconds * rounds,
        rounds=rounds,
        loader=load,
        profile=profile,
    )
    labels = [label for label, _, _ in variants]
    rows = {(labels[index % len(labels)], row.stats.batch): row for index, row in enumerate(report.rows)}
    return rows, report


# (label, artifact key, runner keywords, runtime, precision as run)
PATHS: tuple[tuple[str, str, dict[str, Any], str, str], ...] = (
    ("ORT FP32", "ort-fp32", {}, "onnxruntime", "fp32"),
    ("ORT FP16", "ort-fp16", {}, "onnxruntime", "fp16 (graph)"),
    (
        "ORT INT8 (SE squeeze as ReduceMean, before the rewrite)",
        "ort-int8-reducemean",
        {},
        "onnxruntime",
        "int8",
    ),
    ("ORT INT8", "ort-int8", {}, "onnxruntime", "int8"),
    ("ORT INT8 split-batch (sessions=2)", "ort-int8", {"sessions": 2}, "onnxruntime", "int8"),
    ("OpenVINO FP32", "ov-fp32", {}, "openvino", "fp32"),
    ("OpenVINO FP16 weights (runs BF16/FP16)", "ov-fp16", {}, "openvino", "fp16"),
    ("OpenVINO INT8 (NNCF), LATENCY", "ov-int8", {"hint": "latency"}, "openvino", "int8"),
    ("OpenVINO INT8 (NNCF), THROUGHPUT", "ov-int8", {"hint": "throughput"}, "openvino", "int8"),
    ("OpenVINO INT8 (NNCF), SE blocks in float, LATENCY", "ov-int8-float-se", {}, "openvino", "int8"),
)
# Demo-model fidelity per path: (label, backend, precision, flavour)
FIDELITY_PATHS = (
    ("ORT FP16", "onnxruntime", "fp16", None),
    ("ORT INT8", "onnxruntime", "int8", "cpu"),
    ("OpenVINO FP32", "openvino", "fp32", None),
    ("OpenVINO FP16", "openvino", "fp16", None),
    ("OpenVINO INT8 (NNCF)", "openvino", "int8", None),
)


def demo_fidelity(work: Path, rebuild: bool) -> list[dict[str, Any]]:
    """Build the trained demo model (models/digits_se_resnet) along every path and verify each against PyTorch."""
    from sedeploy.demo import find_example
    from sedeploy.verify import verify

    example = find_example(REPO)
    folder = work / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def export() -> Path:
        return export_onnx(
            example.arch,
            weights=example.weights,
            img_size=example.img_size,
            labels=example.labels,
            output=folder / "digits_se_resnet.onnx",
        ).path

    source = _cached(folder, "fp32", export, seconds, rebuild)
    rows = []
    for label, backend, precision, flavour in FIDELITY_PATHS:

        def make(backend: str = backend, precision: str = precision, flavour: str | None = flavour) -> Path:
            options = BuildOptions(
                precision=precision,
                backend=backend,
                target=flavour,
                calib_dir=example.calibration if precision == "int8" else None,
            )
            return build_engine(source, options).artifacts[0]

        artifact = _cached(folder, label, make, seconds, rebuild)
        report = verify(artifact, example.weights, data=example.heldout)
        rows.append(
            {
                "path": label,
                "artifact": artifact.name,
                "passed": report.passed,
                "mean_cosine": report.comparison.mean_cosine,
                "min_cosine": report.comparison.min_cosine,
                "reference_accuracy": report.reference_accuracy,
                "artifact_accuracy": report.artifact_accuracy,
                "top1_drop_points": report.accuracy_drop,
                "samples": report.samples,
            }
        )
    return rows


def op_profiles(artifacts: Artifacts, runs: int) -> list[Any]:
    """ORT's per-op kernel time of INT8 before (ReduceMean squeeze) and after the rewrite, at batch 1 and 8."""
    from sedeploy.backends.onnxruntime import profile_ops
    from sedeploy.bench import OpProfile

    rng = np.random.default_rng(0)
    profiles = []
    for key in ("ort-int8-reducemean", "ort-int8"):
        path = artifacts.paths[key]
        for batch in (1, 8):
            feed = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
            seconds = profile_ops(path, feed, runs)
            ops = tuple((op, 1e3 * total / runs) for op, total in seconds.items())
            profiles.append(OpProfile(str(path), path.name, batch, runs, ops))
            time.sleep(0.1)
    return profiles


def _targets_text(rates: dict[tuple[str, int], float]) -> list[str]:
    int8 = [
        label for label, *_ in PATHS if "INT8" in label and "before" not in label and "float" not in label
    ]
    best = {batch: max(int8, key=lambda label: rates[(label, batch)]) for batch in (1, 8)}
    fp32 = {batch: rates[("ORT FP32", batch)] for batch in (1, 8)}
    lines = ["## Where the targets stand (this run)", ""]
    for batch, target, ratio_target in ((8, 130, 3.3), (1, 100, 2.6)):
        rate = rates[(best[batch], batch)]
        lines.append(
            f"- batch {batch}: best INT8 path is {best[batch]} at {rate:.1f} img/s = {rate / fp32[batch]:.2f}x "
            f"ORT FP32 (target >= {target} img/s, about >= {ratio_target}x ORT FP32)."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per sample and 2 rounds; 10 profiled calls")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per path, batch and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached artifacts")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the demo model's verify rows")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 2
    logging.basicConfig(level=logging.WARNING)
    artifacts = prepare(WORK, rebuild=args.rebuild)
    fidelity = [] if args.no_fidelity else demo_fidelity(WORK, args.rebuild)  # before timing: builds are loud
    variants = [(label, artifacts.paths[key], options) for label, key, options, *_ in PATHS]
    rows, report = bench_variants(variants, (1, 8), args.seconds, args.rounds)
    rates = {key: row.stats.images_per_s for key, row in rows.items()}
    profiles = op_profiles(artifacts, 10 if args.quick else 20)

    lines = [
        "# Edge CPU: SE-ResNet-50 at 224, ONNX Runtime vs OpenVINO, FP32 / FP16 / INT8",
        "",
        f"Machine: {report.machine['description']}; onnxruntime {report.machine['versions'].get('onnxruntime')}, "
        f"OpenVINO {_openvino_version()}, sedeploy {sedeploy.__version__}. `sedeploy.bench`: every path "
        f"interleaved in one run, {args.rounds} rounds x {args.seconds:g} s per path and batch. Command: "
        f"`python benchmarks/edge_cpu.py --seconds {args.seconds:g} --rounds {args.rounds}`.",
        "SE-ResNet-50 weights are random and its calibration images synthetic (speed only); fidelity is the "
        "trained demo model's, built along the same paths.",
        "",
        "| path | runtime | precision | batch 1 img/s | vs ORT FP32 | batch 8 img/s | vs ORT FP32 | p50 ms b1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = []
    for label, key, options, runtime, precision in PATHS:
        ratio = {b: rates[(label, b)] / rates[("ORT FP32", b)] for b in (1, 8)}
        lines.append(
            f"| {label} | {runtime} | {precision} | {rates[(label, 1)]:.1f} | {ratio[1]:.2f}x "
            f"| {rates[(label, 8)]:.1f} | {ratio[8]:.2f}x | {rows[(label, 1)].stats.p50_ms:.1f} |"
        )
        table.append(
            {
                "path": label,
                "artifact": artifacts.paths[key].name,
                "runner_options": options,
                "runtime": runtime,
                "precision": precision,
                **{f"batch{b}_images_per_s": round(rates[(label, b)], 2) for b in (1, 8)},
                **{f"batch{b}_vs_ort_fp32": round(ratio[b], 3) for b in (1, 8)},
                "build_seconds": artifacts.build_seconds.get(key),
            }
        )
    lines += ["", *_targets_text(rates)]
    if fidelity:
        lines += [
            "",
            "## Fidelity on the trained demo model (models/digits_se_resnet, held-out digits, vs PyTorch FP32)",
            "",
            "| path | verify | mean cosine | min cosine | top-1 (ref -> artifact) | drop (points) |",
            "|---|---|---|---|---|---|",
        ]
        for row in fidelity:
            ref, art, drop = row["reference_accuracy"], row["artifact_accuracy"], row["top1_drop_points"]
            accuracy = f"{100 * ref:.2f}% -> {100 * art:.2f}%" if ref is not None and art is not None else "-"
            lines.append(
                f"| {row['path']} | {'pass' if row['passed'] else 'FAIL'} | {row['mean_cosine']:.5f} "
                f"| {row['min_cosine']:.5f} | {accuracy} | {'-' if drop is None else f'{drop:.2f}'} |"
            )
    lines += ["", "## Where ONNX Runtime's INT8 time goes, before and after the SE squeeze rewrite", ""]
    for profile in profiles:
        lines += [profile.to_markdown(top=8), ""]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "edge_cpu.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "rows": table,
                "fidelity": fidelity,
                "profiles": [profile.to_dict() for profile in profiles],
                "bench": report.to_dict(),
                "seconds": args.seconds,
                "rounds": args.rounds,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print("\n".join(lines))


def _openvino_version() -> str:
    from sedeploy.backends import openvino as ov_backend

    return ov_backend.version()


if __name__ == "__main__":
    main()
