"""The commands that run artifacts: ``bench``, ``verify``, ``predict``, ``inspect`` and the ``demo``.

Each command imports its library module when it runs; defaults named in help texts are read from their
library homes (:class:`~sedeploy.cli.options.Later`) when the help is shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sedeploy.cli.options import (
    DEVICE,
    JSON_OUTPUT,
    Later,
    batch_option,
    check_json_out,
    emit,
    option,
    parse_batch_sizes,
    progress_wanted,
    refuse_outputs_over_inputs,
)


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@batch_option("Batch sizes to time, comma-separated.", type=str, default="1,8", show_default=True)
@option(
    "--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls per sample."
)
@option("--iterations", type=click.IntRange(min=1), help="Timed calls per artifact, batch and round.")
@option(
    "--duration", type=float, default=6.0, show_default=True, help="Timed seconds per artifact and batch."
)
@option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved rounds.")
@option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: all cores).")
@JSON_OUTPUT
@option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Write a Markdown table here.")
@option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of images/s vs batch.")
@option(
    "--profile", is_flag=True, help="Add ONNX Runtime's per-op profile: share of kernel time per op type."
)
@option(
    "--compare",
    "compare_all",
    is_flag=True,
    help="ARTIFACT is an exported FP32 .onnx: find or build FP16, INT8 (cpu) and TensorRT FP16/INT8 (when "
    "present) beside it and bench them with PyTorch eager FP32 first.",
)
@option(
    "--calibration",
    type=click.Path(file_okay=False),
    help="With --compare: INT8 calibration images (default: build-engine's, calibration/).",
)
@option(
    "--calib-size",
    type=click.IntRange(min=1),
    help=Later(
        "sedeploy.building",
        "DEFAULT_CALIBRATION_SIZE",
        "With --compare: calibration images used (default {}).".format,
    ),
)
def bench_command(
    artifacts: tuple[str, ...],
    batch: str,
    warmup: int,
    iterations: int | None,
    duration: float,
    rounds: int,
    threads: int | None,
    json_out: str | None,
    markdown_path: str | None,
    plot_path: str | None,
    profile: bool,
    compare_all: bool,
    calibration: str | None,
    calib_size: int | None,
) -> None:
    """Throughput and latency of ARTIFACTS side by side, against their GFLOPs and this machine's roof."""
    timing: dict[str, Any] = dict(
        warmup=warmup,
        iterations=iterations,
        duration=None if iterations else duration,
        rounds=rounds,
        threads=threads,
        progress=progress_wanted(json_out),
        profile=profile,
    )
    batch_sizes = parse_batch_sizes(batch, "--batch")
    refuse_outputs_over_inputs(
        [("json_out", json_out), ("markdown_path", markdown_path), ("plot_path", plot_path)], list(artifacts)
    )
    from sedeploy.bench import bench, compare, write_reports

    if compare_all:
        if len(artifacts) != 1:
            raise click.UsageError("--compare takes exactly one exported FP32 .onnx file")
        report = compare(artifacts[0], batch_sizes, calibration=calibration, calib_size=calib_size, **timing)
    else:
        if calibration or calib_size:
            raise click.UsageError("--calibration and --calib-size go with --compare")
        report = bench(artifacts, batch_sizes, **timing)
    write_reports(
        report,
        Path(json_out) if json_out and json_out != "-" else None,
        Path(markdown_path) if markdown_path else None,
        Path(plot_path) if plot_path else None,
    )
    click.echo(json.dumps(report.to_dict(), indent=2) if json_out == "-" else report.to_text())


def _thresholds_help(field: str, unit: str, thresholds: dict[str, Any]) -> str:
    return ", ".join(
        f"{precision} {getattr(limits, field)}{unit}" for precision, limits in thresholds.items()
    )


def _thresholds(field: str, unit: str, text: str) -> Later:
    """``text`` with ``{}`` replaced by verify's default ``field`` per precision (``compare.DEFAULT_THRESHOLDS``)."""
    return Later(
        "sedeploy.compare",
        "DEFAULT_THRESHOLDS",
        lambda thresholds: text.format(_thresholds_help(field, unit, thresholds)),
    )


@click.command("verify")
@click.argument("artifact", type=click.Path(dir_okay=False))
@option(
    "--reference",
    metavar="ONNX|WEIGHTS|ARCH",
    help="What to compare with (default: the FP32 ONNX the artifact was built from, found via its manifest).",
)
@option(
    "--data",
    type=click.Path(),
    help="Image folder (class sub-folders give labels) or .npy of preprocessed inputs (default: synthetic).",
)
@option(
    "--num",
    type=click.IntRange(min=1),
    help=Later(
        "sedeploy.verify",
        then="How many inputs (default: {0.DEFAULT_IMAGES} images, or {0.DEFAULT_SYNTHETIC} synthetic).".format,
    ),
)
@batch_option("Batch size (default: 32, or the model's max batch).")
@option(
    "--min-cos",
    type=click.FloatRange(-1, 1),
    help=_thresholds("min_cosine", "", "Lowest per-sample cosine similarity (default: {})."),
)
@option(
    "--max-top1-drop",
    type=click.FloatRange(0, 100),
    help=_thresholds(
        "max_top1_drop",
        " pp",
        "Largest top-1 accuracy drop (or share of changed top-1 without labels), percentage points (default: {}).",
    ),
)
@DEVICE
@option(
    "--verify-hash/--no-verify-hash",
    default=True,
    show_default=True,
    help="Check the artifact against the sha256 its manifest records before loading it.",
)
@option(
    "--layers",
    is_flag=True,
    help="INT8: add the error each quantized layer adds, worst first, named by its PyTorch module "
    "(--json: a 'layers' list).",
)
@option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="With --layers: write a PNG of each layer's error against depth.",
)
@JSON_OUTPUT
@click.pass_context
def verify_command(
    ctx: click.Context,
    artifact: str,
    reference: str | None,
    data: str | None,
    num: int | None,
    batch: int | None,
    min_cos: float | None,
    max_top1_drop: float | None,
    device: str | None,
    verify_hash: bool,
    layers: bool,
    plot_path: str | None,
    json_out: str | None,
) -> None:
    """Compare ARTIFACT with its reference on the same inputs; exit 0 on pass, 1 on fail, 2 on usage errors."""
    check_json_out(json_out)
    _refuse_verify_outputs(artifact, reference, data, [("json_out", json_out), ("plot_path", plot_path)])
    if plot_path and not layers:
        raise click.UsageError("--plot goes with --layers")
    from sedeploy.verify import verify

    report = verify(
        artifact,
        reference,
        data=data,
        num=num,
        batch=batch,
        min_cosine=min_cos,
        max_top1_drop=max_top1_drop,
        device=device,
        verify_hash=verify_hash,
        progress=progress_wanted(json_out),
        layers=layers,
    )
    if plot_path and report.layer_report is not None:
        from sedeploy.measure.layers import plot_layer_errors

        plot_layer_errors(report.layer_report, plot_path)
    emit(report, json_out)
    if not report.passed:
        ctx.exit(1)


def _refuse_verify_outputs(
    artifact: str, reference: str | None, data: str | None, outputs: list[tuple[str, str | None]]
) -> None:
    """verify's report files may not be its artifact, reference, data file or a held-out image."""
    from sedeploy.data import listed_images_among

    others: list[tuple[str, str | None]] = [("the reference", reference), ("the data", data)]
    if data is not None and Path(data).is_dir():
        named = [path for _, path in outputs if path and path != "-"]
        others += [("a held-out image", str(image)) for image in listed_images_among(data, named)]
    refuse_outputs_over_inputs(outputs, [artifact], others)


@click.command("cache")
@option("--clear", is_flag=True, help="Remove every cached image set (nothing else in the folder).")
@JSON_OUTPUT
def cache_command(clear: bool, json_out: str | None) -> None:
    """Where decoded calibration and held-out images are cached, how much they take, and clearing them.

    The cache is SEDEPLOY_CACHE_DIR, else the platform's cache directory (~/.cache/sedeploy/images); it is
    kept under SEDEPLOY_CACHE_MAX_MB (default 2048), the least recently used sets going first.
    """
    check_json_out(json_out)
    from sedeploy.data.cache import cache_info, clear_cache

    if clear:
        before = clear_cache()
        click.echo(
            f"removed {before.files} cached image set(s), {before.bytes / 2**20:.1f} MB, from {before.folder}"
        )
    emit(cache_info(), json_out)


@click.command("inspect")
@click.argument("artifact", type=click.Path())
@option("--source", type=click.Path(), help="The exported .onnx it was built from, when not beside it.")
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(artifact: str, source: str | None, as_json: bool) -> None:
    """What ARTIFACT is (manifest, model) and what precision each layer runs in after the backend optimised it."""
    from sedeploy.inspect import inspect_artifact

    report = inspect_artifact(artifact, source)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())


@click.command("predict")
@click.argument("artifact", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per image.")
@batch_option("Batch size (default: 32, or the model's max batch).")
@DEVICE
@option(
    "--verify-hash/--no-verify-hash",
    default=True,
    show_default=True,
    help="Check the artifact against the sha256 its manifest records before loading it.",
)
@option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Write one JSON line per image to this file as each batch finishes (nothing held in memory).",
)
@option("--resume", is_flag=True, help="With --output: continue the file, skipping the images already in it.")
@option(
    "--workers",
    type=click.IntRange(min=0),
    help="Decode threads beside inference (default: the usable cores; 0: decode then infer, in turn).",
)
@option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    help="Score on a Ray Data actor pool: a local Ray, or the cluster at ADDRESS ('auto': the running one).",
)
@option(
    "--concurrency", type=click.IntRange(min=1), help="With --ray: scoring actors (default: one per node)."
)
@JSON_OUTPUT
def predict_command(
    artifact: str,
    images: tuple[str, ...],
    top_k: int,
    batch: int | None,
    device: str | None,
    verify_hash: bool,
    output: str | None,
    resume: bool,
    workers: int | None,
    ray_address: str | None,
    concurrency: int | None,
    json_out: str | None,
) -> None:
    """Labels and probabilities of each image in IMAGE_OR_DIR... (folders are read recursively)."""
    check_json_out(json_out)
    from sedeploy.files import refuse_output_over_input
    from sedeploy.predict import input_files

    refuse_output_over_input(
        [("json_out", None if json_out == "-" else json_out)], input_files(artifact, images, [json_out])
    )
    if resume and not output:
        raise click.UsageError("--resume goes with --output")
    if concurrency is not None and ray_address is None:
        raise click.UsageError("--concurrency goes with --ray")
    from sedeploy.predict import predict

    report = predict(
        artifact,
        images,
        top_k=top_k,
        batch=batch,
        device=device,
        verify_hash=verify_hash,
        progress=progress_wanted(json_out),
        output=output,
        resume=resume,
        workers=workers,
        ray=ray_address,
        concurrency=concurrency,
    )
    emit(report, json_out)


@click.command("demo")
@option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=Later("sedeploy.demo", "DEFAULT_OUT", str),
    show_default=True,
    help="Folder for the artifacts, report.md, report.json and the plots.",
)
@option(
    "--quick", is_flag=True, help="About a minute: fewer calibration images, short benches, no SE-ResNet-50."
)
@JSON_OUTPUT
@click.pass_context
def demo_command(ctx: click.Context, out_dir: str, quick: bool, json_out: str | None) -> None:
    """Export, quantize, build, verify and bench the shipped digits SE-ResNet, end to end."""
    from sedeploy.optional import import_optional

    import_optional("torch")  # the demo exports the shipped checkpoint: one line naming the extra without it
    from sedeploy.demo import run_demo

    report = run_demo(out_dir, quick=quick, progress=progress_wanted(json_out))
    emit(report, json_out)
    if not report.passed:
        ctx.exit(1)
