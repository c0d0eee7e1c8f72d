"""FP32 vs FP16 vs INT8 (both flavours) of SE-ResNet-50 at 224 on ONNX Runtime CPU: speed and fidelity.

Usage: python benchmarks/precision_cpu.py [--out benchmarks/results/precision_cpu.md] [--seconds 8]

Everything is built with sedeploy's own pipeline (export -> build-engine). No trained
SE-ResNet-50 can be downloaded here, so the weights are random and the calibration
images are synthetic (smooth random fields): the speed figures are real, the
fidelity figures only show the pipeline works end to end (a random network's
logits are nearly constant, which makes top-1 agreement meaningless). The trained
small model's fidelity is asserted in tests/precision/test_quantize.py.

Timing is ``sedeploy.bench`` (interleaved runs, pauses against ONNX Runtime's
spinning threads, the GEMM roof probe), so these rows mean what ``sedeploy bench``
prints.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import sedeploy
from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.bench import bench, write_reports
from sedeploy.build import BuildOptions, build_engine
from sedeploy.compare import compare_logits
from sedeploy.data import load_image_set, preprocessing_for
from sedeploy.export import export_onnx


def synthetic_images(folder: Path, count: int, size: int = 256, seed: int = 0) -> None:
    """Smooth random RGB fields: closer to photographs' statistics than white noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision_cpu.md")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per variant and batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--calib-size", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sedeploy-bench-"))
    try:
        model_path = work / "se_resnet50.onnx"
        export_onnx("se_resnet50", output=model_path, max_batch=8)
        calib = work / "calib"
        synthetic_images(calib, args.calib_size)
        variants = {"fp32": model_path}
        builds = {
            "fp16": BuildOptions(precision="fp16", backend="onnxruntime"),
            "int8-tensorrt": BuildOptions(
                precision="int8",
                backend="onnxruntime",
                target="tensorrt",
                calib_dir=calib,
                calib_size=args.calib_size,
            ),
            "int8-cpu": BuildOptions(
                precision="int8",
                backend="onnxruntime",
                target="cpu",
                calib_dir=calib,
                calib_size=args.calib_size,
            ),
        }
        build_seconds = {}
        for name, options in builds.items():
            started = time.perf_counter()
            variants[name] = build_engine(model_path, options).artifacts[0]
            build_seconds[name] = time.perf_counter() - started

        preprocessing, channels = preprocessing_for(model_path)
        images = load_image_set(calib, preprocessing, channels).images[:32]
        fp32 = ort_backend.create_session(model_path, ["CPUExecutionProvider"]).run(None, {"input": images})[
            0
        ]
        fidelity = {
            name: compare_logits(
                fp32,
                ort_backend.create_session(path, ["CPUExecutionProvider"]).run(None, {"input": images})[0],
            )
            for name, path in variants.items()
        }
        report = bench(list(variants.values()), batches=(1, 8), duration=args.seconds, rounds=args.rounds)
        write_reports(report, args.out.with_suffix(".json"))
        rate = {(Path(row.artifact), row.stats.batch): row.stats.images_per_s for row in report.rows}
        lines = [
            "# SE-ResNet-50, 224x224, ONNX Runtime CPU: FP32 vs FP16 vs INT8",
            "",
            f"Machine: {report.machine['description']}; sedeploy {sedeploy.__version__}, "
            f"onnxruntime {ort_backend.version()}. `sedeploy.bench`: {args.rounds} interleaved rounds, "
            f"{args.seconds:g} s per variant and batch. Command: "
            f"`python benchmarks/precision_cpu.py --seconds {args.seconds:g} --rounds {args.rounds}`",
            "",
            "| variant | batch 1 img/s | batch 8 img/s | vs FP32 (b8) | cosine vs FP32 (mean) | build s |",
            "|---|---|---|---|---|---|",
        ]
        fp32_b8 = rate[(model_path, 8)]
        for name, path in variants.items():
            b1, b8 = rate[(path, 1)], rate[(path, 8)]
            lines.append(
                f"| {name} | {b1:.1f} | {b8:.1f} | {b8 / fp32_b8:.2f}x | {fidelity[name].mean_cosine:.5f} | "
                f"{build_seconds.get(name, 0):.1f} |"
            )
        lines += [
            "",
            "Weights are random and calibration images synthetic, so the cosine column only shows that each",
            "file computes the same function as FP32; fidelity on a trained model is in tests/precision/test_quantize.py",
            "and in `sedeploy demo`. The full report (latency percentiles, GFLOP/s, share of the GEMM roof) is",
            "in the JSON beside this file.",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
