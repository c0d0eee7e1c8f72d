"""ONNX Runtime CPU session settings, one benchmark row each: the evidence for sedeploy's session defaults.

Usage:
    python benchmarks/ort_settings.py [--quick] [--seconds S] [--rounds R] [--rebuild]

SE-ResNet-50 at 224 (random weights; speed only), FP32 and INT8-cpu (the rewritten
graph: SE squeeze as GlobalAveragePool), batch 1 and 8. Every row changes one
setting from sedeploy's default session (``backends.onnxruntime.session_options``)
and is timed interleaved with the default in the same ``sedeploy.bench`` run; the
ratio is to the default row of the same precision and batch. Writes
benchmarks/results/ort_settings.{md,json}. Artifacts are cached in
benchmarks/.work/ (see edge_cpu.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from edge_cpu import RESULTS, WORK, bench_variants, prepare

from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.host import usable_cores

SPIN = "session.intra_op.allow_spinning"

SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    # row label: (what it changes from the default, runner keywords)
    "default": ("sedeploy's defaults", {}),
    "spinning off": (f"{SPIN}=0 (worker threads sleep between runs)", {"session_config": {SPIN: "0"}}),
    "level extended": (
        "graph optimization level extended instead of all",
        {"optimization_level": "extended"},
    ),
    "threads cores+1": ("intra-op threads = usable cores + 1", {"threads": usable_cores() + 1}),
    "parallel mode": ("execution_mode parallel", {"execution_mode": "parallel"}),
    "dynamic block base 4": (
        "session.dynamic_block_base=4",
        {"session_config": {"session.dynamic_block_base": "4"}},
    ),
    "split-batch 2x1": ("sessions=2: two 1-thread sessions on halves of the batch", {"sessions": 2}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per sample, 2 rounds")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="timed seconds per variant, batch and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached artifacts")
    parser.add_argument("--only", nargs="*", help="setting labels to run besides the default")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 2
    logging.basicConfig(level=logging.WARNING)
    artifacts = prepare(WORK, rebuild=args.rebuild, openvino=False)
    settings = {k: v for k, v in SETTINGS.items() if not args.only or k == "default" or k in args.only}
    variants = [
        (f"{precision} | {label}", artifacts.paths[f"ort-{precision}"], options)
        for precision in ("int8", "fp32")
        for label, (_, options) in settings.items()
    ]
    rows, report = bench_variants(variants, (1, 8), args.seconds, args.rounds)
    table: list[dict[str, Any]] = []
    lines = [
        "# ONNX Runtime CPU session settings, SE-ResNet-50 at 224",
        "",
        f"Machine: {report.machine['description']}; onnxruntime {ort_backend.version()}; sedeploy.bench, "
        f"{args.rounds} interleaved rounds x {args.seconds:g} s per row and batch, all rows in one run. "
        f"Command: `python benchmarks/ort_settings.py --seconds {args.seconds:g} --rounds {args.rounds}`.",
        "Default = sedeploy's `session_options()`: level all, intra-op threads = usable cores "
        f"({usable_cores()}), sequential, spinning on (ONNX Runtime's default). Each row changes one thing; ratio to the "
        "default row of the same precision and batch.",
        "",
        "| precision | setting | change | batch 1 img/s | vs default | batch 8 img/s | vs default |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision in ("int8", "fp32"):
        base = {batch: rows[(f"{precision} | default", batch)].stats.images_per_s for batch in (1, 8)}
        for label, (change, _) in settings.items():
            rate = {batch: rows[(f"{precision} | {label}", batch)].stats.images_per_s for batch in (1, 8)}
            ratio = {batch: rate[batch] / base[batch] for batch in (1, 8)}
            table.append(
                {
                    "precision": precision,
                    "setting": label,
                    "change": change,
                    **{f"batch{b}_images_per_s": round(rate[b], 2) for b in (1, 8)},
                    **{f"batch{b}_vs_default": round(ratio[b], 3) for b in (1, 8)},
                }
            )
            lines.append(
                f"| {precision} | {label} | {change} | {rate[1]:.1f} | {ratio[1]:.2f}x | {rate[8]:.1f} "
                f"| {ratio[8]:.2f}x |"
            )
    lines += [
        "",
        "How the defaults follow from these rows (`sessions=2` is opt-in, `session_config=` overrides any entry):",
        "a setting becomes a default only where its row beats the default at both batch sizes for INT8 in",
        "repeated runs; split-batch stays opt-in because it needs a session per piece and helps only batches",
        "of two or more. The figures behind the current defaults are quoted in the docstring of",
        "`sedeploy.backends.onnxruntime.session_options`.",
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ort_settings.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(
        json.dumps(
            {"rows": table, "bench": report.to_dict(), "seconds": args.seconds, "rounds": args.rounds},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
