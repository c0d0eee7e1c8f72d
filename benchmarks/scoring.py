"""Scoring image sets (issue 37): img/s of the engine alone, the sequential loop, the pipelined predict and Ray.

    python benchmarks/scoring.py [--images N] [--memory-images SMALL,LARGE] [--no-ray]

Generates JPEGs of 500x375 (smooth random content, quality 90) into benchmarks/.work/scoring/ (git-ignored),
exports models/digits_se_resnet and SE-ResNet-50 (random weights: speed only) and builds SE-ResNet-50's CPU
INT8 on ONNX Runtime (gate off: random weights), then measures, in one run, for each model:

- e: the engine alone, batch 32 of preprocessed rows, all cores;
- d: one core's decode + preprocess (``runner.preprocess`` on one thread);
- the sequential loop (``predict(..., workers=0)``: decode a batch, then run it) and the pipelined
  ``predict`` (decode threads beside inference), best of two interleaved rounds;
- Ray Data with 1 and 2 actors (``score_dataset``; end to end, actor start included), when ray is installed;
- the issue's target for the pipeline, 0.9 / (1/(c*d) + 1/e), with c the usable cores;
- peak RSS of ``predict --output`` over SMALL and LARGE images (each in its own process).

Writes benchmarks/results/scoring.md and scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sedeploy.build import BuildOptions, build_engine
from sedeploy.demo import find_example
from sedeploy.export import export_onnx
from sedeploy.host import describe_machine, usable_cores
from sedeploy.predict import predict
from sedeploy.runtime import load

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "scoring"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of 500x375: upsampled random colour fields plus noise, like photos to a decoder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        if not path.exists():
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375))
            pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (375, 500, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def linked_copies(sources: list[Path], folder: Path, count: int) -> Path:
    """``count`` hard links cycling over ``sources`` (distinct paths, no extra disk) for the memory runs."""
    if folder.exists() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(count):
        os.link(sources[index % len(sources)], folder / f"{index:06d}.jpg")
    return folder


def artifacts(calib: Path) -> dict[str, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    example = find_example(ROOT)
    digits = WORK / "digits.onnx"
    if not digits.exists():
        export_onnx(example.arch, weights=example.weights, img_size=example.img_size, labels=example.labels,
                    output=digits)  # fmt: skip
    se50 = WORK / "se_resnet50.onnx"
    if not se50.exists():
        export_onnx("se_resnet50", output=se50)
    int8 = [p for p in WORK.glob("se_resnet50*int8*.onnx") if not p.name.endswith(".fp32.onnx")]
    if not int8:
        options = BuildOptions(precision="int8", backend="onnxruntime", target="cpu", calib_dir=calib,
                               calib_size=16, gate=False, repair=False)  # fmt: skip
        int8 = [build_engine(se50, options).artifacts[-1]]
    return {"digits (FP32, ONNX Runtime)": digits, "SE-ResNet-50 INT8 (ONNX Runtime)": int8[0]}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def measure(artifact: Path, images: list[Path], folder: Path, ray_runs: bool) -> dict[str, float]:
    row: dict[str, float] = {}
    with load(artifact) as runner:
        rows = runner.preprocess(images[:BATCH])
        runner(rows)  # warm
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < 4.0:
            runner(rows)
            done += len(rows)
        row["engine"] = rate(done, time.perf_counter() - start)
        start = time.perf_counter()
        for path in images:
            runner.preprocess(path)
        row["decode_one_core"] = rate(len(images), time.perf_counter() - start)
        for _ in range(2):  # interleaved rounds, best kept: the machine is shared
            for name, workers in (("sequential", 0), ("pipelined", None)):
                report = predict(runner, [folder], batch=BATCH, workers=workers)
                row[name] = max(row.get(name, 0.0), rate(len(report.predictions), report.seconds))
    if ray_runs:
        import ray

        from sedeploy.scoring import score_dataset

        for actors in (1, 2):
            start = time.perf_counter()
            scores = score_dataset(artifact, [str(p) for p in images], batch=BATCH, concurrency=actors)
            row[f"ray_{actors}"] = rate(scores.scored, time.perf_counter() - start)
            row[f"ray_{actors}_first_batch_s"] = scores.first_batch_s
        assert ray.is_initialized()
    cores = usable_cores()
    row["cores"] = cores
    row["target"] = 0.9 / (1 / (cores * row["decode_one_core"]) + 1 / row["engine"])
    return row


PEAK_RSS = """
import sys
from sedeploy.predict import predict
report = predict(sys.argv[1], [sys.argv[2]], batch=32, output=sys.argv[3])
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(report.scored, peak)
"""
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child would report its parent's peak.


def peak_rss(artifact: Path, folder: Path) -> tuple[int, float, float]:
    """Images scored, peak RSS in MiB and seconds of ``predict(output=...)`` over ``folder``, in a fresh process."""
    out = WORK / "rss.jsonl"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(artifact), str(folder), str(out)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    scored, kib = result.stdout.split()[-2:]
    return int(scored), int(kib) / 1024, time.perf_counter() - start


def limiter(row: dict[str, float], name: str) -> str:
    e, d, c = row["engine"], row["decode_one_core"], row["cores"]
    if name == "sequential":
        return f"decode then engine in turn: 1/(1/d + 1/e) = {1 / (1 / d + 1 / e):.0f} img/s"
    if name == "pipelined":
        return "engine" if row[name] >= 0.9 * e else f"decode sharing the {c:g} cores with the engine"
    return (
        "actor start (imports, opening the artifact) and Ray's per-batch transfer, then decode in the actor"
    )


def markdown(
    results: dict[str, dict[str, float]], memory: list[dict[str, float]], machine: dict, args
) -> str:  # type: ignore[type-arg]
    lines = [
        "# Scoring image sets: engine, sequential loop, pipelined predict, Ray Data (issue 37)",
        "",
        f"Machine: {machine['description']}. Shared with other sessions (load varies): one run, best of two "
        "interleaved rounds for the two predicts.",
        "",
        f"Command: `python benchmarks/scoring.py --images {args.images} --memory-images {args.memory_images}`; "
        f"{args.images} JPEGs of 500x375, batch {BATCH}.",
        "",
        "| model | engine e | decode d (1 core) | sequential | pipelined | target 0.9/(1/(c d)+1/e) | met | "
        "Ray 1 actor | Ray 2 actors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, row in results.items():
        ray1 = f"{row['ray_1']:.1f} ({row['ray_1_first_batch_s']:.1f} s)" if "ray_1" in row else "-"
        ray2 = f"{row['ray_2']:.1f} ({row['ray_2_first_batch_s']:.1f} s)" if "ray_2" in row else "-"
        met = "yes" if row["pipelined"] >= row["target"] else "no"
        lines.append(
            f"| {model} | {row['engine']:.1f} | {row['decode_one_core']:.1f} | {row['sequential']:.1f} | "
            f"{row['pipelined']:.1f} | {row['target']:.1f} | {met} | {ray1} | {ray2} |"
        )
    lines += ["", "What limits each (img/s):", ""]
    for model, row in results.items():
        for name in ("sequential", "pipelined", "ray_1"):
            if name in row:
                lines.append(f"- {model}, {name}: {limiter(row, name)}")
    lines += [
        "",
        "Ray Data figures are end to end (a local Ray already running; actor start, imports and opening the "
        "artifact included), over the same images: on a set this small the start dominates. In brackets: seconds "
        "to the first batch in the driver (actor start, imports, opening the artifact).",
        "",
        "## Memory: peak RSS of `predict --output` (one fresh process each, digits model)",
        "",
        "| images | peak RSS (MiB) | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {m['images']} | {m['rss_mib']:.1f} | {m['seconds']:.1f} |" for m in memory]
    if len(memory) == 2:
        growth = memory[1]["rss_mib"] / memory[0]["rss_mib"] - 1
        lines += ["", f"Growth from {memory[0]['images']} to {memory[1]['images']} images: {growth:+.1%} "
                  f"(target: within 10%)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--memory-images", default="2000,20000")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    images = make_jpegs(WORK / "jpegs", args.images)
    models = artifacts(WORK / "jpegs")
    ray_runs = not args.no_ray
    if ray_runs:
        try:
            import ray

            ray.init(num_cpus=usable_cores() + 1, include_dashboard=False, log_to_driver=False)
        except ImportError:
            ray_runs = False
    results = {}
    for name, artifact in models.items():
        results[name] = measure(artifact, images, WORK / "jpegs", ray_runs)
        print(name, json.dumps({k: round(v, 1) for k, v in results[name].items()}), flush=True)
    if ray_runs:
        ray.shutdown()
    memory = []
    for count in (int(n) for n in args.memory_images.split(",")):
        folder = linked_copies(images, WORK / f"many-{count}", count)
        scored, rss, seconds = peak_rss(models["digits (FP32, ONNX Runtime)"], folder)
        memory.append({"images": scored, "rss_mib": rss, "seconds": seconds})
        print("memory", memory[-1], flush=True)
    machine = describe_machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scoring.md").write_text(markdown(results, memory, machine, args))
    (RESULTS / "scoring.json").write_text(
        json.dumps({"machine": machine, "results": results, "memory": memory}, indent=2, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
