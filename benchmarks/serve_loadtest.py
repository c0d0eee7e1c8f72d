"""The demo digits model served by ``sedeploy serve`` (a real Triton via PyTriton), load-tested on loopback.

Usage: python benchmarks/serve_loadtest.py [--duration 8] [--out benchmarks/results/serve_loadtest.md]

Builds the FP32 ONNX and the CPU INT8 ONNX of models/digits_se_resnet with the
library (``export_onnx``, ``build_engine``) into benchmarks/.work/serve/ (git-ignored),
serves both from one server (models ``digits_fp32`` and ``digits_int8``) with the
default dynamic batcher, and runs ``sedeploy.serving.loadtest.loadtest`` at concurrency 1, 4
and 16 (one image per request) against each, over HTTP. Writes the table and the
machine's description to ``--out`` (Markdown) and the same with every figure as
JSON beside it.

Clients and server share the machine's cores, so client-side work (serialising,
HTTP) competes with inference: on a 2-core machine the figures are what one box
serving itself shows, not what a dedicated server would.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import sedeploy
from sedeploy.build import BuildOptions, build_engine
from sedeploy.demo import find_example
from sedeploy.export import export_onnx
from sedeploy.files import write_json_atomic
from sedeploy.host import describe_machine
from sedeploy.serving.loadtest import LoadtestReport, loadtest
from sedeploy.serving.server import serve

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "serve"
CONCURRENCY = (1, 4, 16)


def build_artifacts(work: Path) -> dict[str, Path]:
    """FP32 ONNX and CPU INT8 (ONNX Runtime's optimized graph) of the shipped digits model."""
    example = find_example(ROOT)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(
        example.arch,
        weights=example.weights,
        img_size=example.img_size,
        labels=example.labels,
        output=work / "digits.onnx",
    ).path
    options = BuildOptions(
        precision="int8", backend="onnxruntime", target="cpu", calib_dir=example.calibration
    )
    int8 = build_engine(fp32, options).artifacts[-1]
    return {"fp32": fp32, "int8": int8}


def in_process(path: Path, rounds: int = 200) -> dict[str, float]:
    """The same artifact called directly (``sedeploy.load``): batch-1 latency and batch-16 throughput,
    to show what the serving path adds."""
    with sedeploy.load(path) as runner:
        figures: dict[str, float] = {}
        for size in (1, 16):
            batch = np.random.default_rng(0).standard_normal((size, 1, 32, 32)).astype(np.float32)
            for _ in range(20):
                runner(batch)
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                runner(batch)
                times.append(time.perf_counter() - start)
            median = float(np.median(times))
            figures[f"batch{size}_median_ms"] = round(median * 1000, 3)
            figures[f"batch{size}_images_per_s"] = round(size / median, 1)
    return figures


def markdown(
    reports: dict[str, LoadtestReport],
    direct: dict[str, dict[str, float]],
    machine: dict[str, object],
    duration: float,
    note: str,
) -> str:
    """The results page: per precision the loadtest table, the batch distribution and the in-process figures."""
    lines = [
        "# `sedeploy serve` + `sedeploy loadtest`: the demo digits model on Triton (PyTriton), loopback",
        "",
        "Produced by `python benchmarks/serve_loadtest.py`. One server serves both artifacts; each level runs "
        f"{duration:g} s (or 20,000 requests) of one 1x32x32 image per request over HTTP; server batches are "
        "the executions Triton's dynamic batcher formed (statistics API, difference over the level).",
        "",
        f"Machine: {json.dumps(machine)}",
        "",
        note,
        "",
    ]
    for precision, report in reports.items():
        figures = direct[precision]
        lines += [
            f"## {precision.upper()} (`{report.model}`)",
            "",
            report.to_markdown(),
            "",
            f"In process (`sedeploy.load`, same run): batch 1 median {figures['batch1_median_ms']:.2f} ms, "
            f"batch 16 {figures['batch16_images_per_s']:.0f} img/s.",
            "",
        ]
        for level in report.levels:
            shown = ", ".join(f"{size}: {count}" for size, count in sorted((level.batch_sizes or {}).items()))
            lines.append(f"- concurrency {level.concurrency}: executions per batch size {shown or 'n/a'}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per concurrency level.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_loadtest.md")
    parser.add_argument(
        "--note",
        default="",
        help="A line about the conditions (e.g. other load on the machine), recorded with the results.",
    )
    args = parser.parse_args()

    artifacts = build_artifacts(WORK)
    reports: dict[str, LoadtestReport] = {}
    with serve(
        [artifacts["fp32"], artifacts["int8"]], name="digits", http_port=0, grpc_port=0, metrics_port=0
    ) as server:
        for precision in ("fp32", "int8"):
            time.sleep(2.0)  # let ONNX Runtime's spinning threads from the last level settle
            reports[precision] = loadtest(
                server.http_url, f"digits_{precision}", concurrency=CONCURRENCY, duration_s=args.duration
            )
            print(reports[precision].to_text())
    direct = {precision: in_process(path) for precision, path in artifacts.items()}
    machine = describe_machine()
    note = args.note or "Conditions: not recorded."
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(reports, direct, machine, args.duration, note), encoding="utf-8")
    write_json_atomic(
        args.out.with_suffix(".json"),
        {
            "machine": machine,
            "note": note,
            "artifacts": {precision: str(path.relative_to(ROOT)) for precision, path in artifacts.items()},
            "reports": {precision: report.to_dict() for precision, report in reports.items()},
            "in_process": direct,
        },
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
