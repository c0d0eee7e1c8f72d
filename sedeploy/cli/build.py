"""The commands that make artifacts: ``build-engine`` and ``optimize``.

Each command imports its library module when it runs; defaults and choices are read from their library homes
(:class:`~sedeploy.cli.options.Later`) when the command is parsed or its help shown.
"""

from __future__ import annotations

from pathlib import Path

import click

from sedeploy.cli.options import (
    IN_CHANS,
    JSON_OUTPUT,
    Later,
    LaterChoice,
    batch_option,
    check_json_out,
    emit,
    option,
    parse_floats,
    parse_img_size,
    parse_names,
    progress_wanted,
)

_CALIBRATION_SIZE = Later("sedeploy.building", "DEFAULT_CALIBRATION_SIZE")


@click.command("build-engine")
@click.argument("model", type=click.Path())
@option("--fp16", is_flag=True, help="FP16-typed graph (FP32 inputs and outputs kept).")
@option("--int8", is_flag=True, help="INT8 with explicit Q/DQ, calibrated on --calib-dir.")
@option(
    "--backend",
    type=LaterChoice(Later("sedeploy.building", "BUILD_BACKENDS")),
    default="auto",
    show_default=True,
    help="auto: TensorRT when TensorRT and an NVIDIA GPU are present; on a CPU with OpenVINO installed, builds "
    "for ONNX Runtime and OpenVINO, times both and uses the faster; else ONNX Runtime.",
)
@option(
    "--target",
    type=LaterChoice(Later("sedeploy.precision", "FLAVOURS")),
    help="INT8 flavour: tensorrt (signed, symmetric) or cpu (unsigned activations; fast on x86). "
    "Default: the backend's device.",
)
@option("--calib-dir", type=click.Path(), help="Calibration images (default: calibration/).")
@option("--calib-size", type=click.IntRange(min=1), default=_CALIBRATION_SIZE, show_default=True)
@option(
    "--calib-method",
    type=LaterChoice(Later("sedeploy.precision", "CALIBRATION_METHODS", lambda methods: (*methods, "sweep"))),
    default=Later("sedeploy.precision", "DEFAULT_CALIBRATION_METHOD"),
    show_default=True,
    help="entropy: TensorRT's (2048-bin histogram, KL over 128 levels); sweep: try every method with the SE "
    "path float and quantized, measure each on --data, keep the most faithful.",
)
@option(
    "--data",
    "sweep_data",
    type=click.Path(),
    help="--calib-method sweep: held-out images (class folders for accuracy) each candidate is measured on.",
)
@option(
    "--high-precision",
    type=LaterChoice(Later("sedeploy.precision", "HIGH_PRECISIONS")),
    help="INT8 tensorrt flavour: type of the layers left out of INT8 (default fp16, as ModelOpt).",
)
@option(
    "--min-precision-share",
    type=click.FloatRange(0, 1),
    default=Later("sedeploy.backends.audit", "DEFAULT_MIN_PRECISION_SHARE"),
    show_default=True,
    help="Fail when the asked precision runs less than this share of the MACs after the backend optimised "
    "the graph (precision audit).",
)
@option(
    "--percentile",
    type=float,
    default=Later("sedeploy.precision", "DEFAULT_PERCENTILE"),
    show_default=True,
    help="For --calib-method percentile.",
)
@option(
    "--quantize-se/--float-se",
    default=None,
    help="Quantize the SE excitation path, or keep it in float (default: quantized for --target cpu, "
    "float for tensorrt).",
)
@option(
    "--every-tensor-int8",
    is_flag=True,
    help="INT8 on every tensor, SE path and head too (a Jetson DLA in one region); repairs never keep a "
    "layer float.",
)
@option("--recalibrate", is_flag=True, help="Ignore a cached calibration.")
@option(
    "--fp16-block-list",
    default="",
    help="Extra op types kept in FP32, comma-separated (e.g. Sigmoid,Softmax).",
)
@option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@option("--img-size", help="Input size N or HxW, for an ONNX without sedeploy metadata.")
@option("--mean", help="Per-channel mean on [0, 1] pixels, comma-separated (no-metadata ONNX).")
@option("--std", help="Per-channel std, comma-separated (no-metadata ONNX).")
@IN_CHANS
@option(
    "--batch-profile",
    "--batch",
    "batch_profile",
    metavar="MIN:OPT:MAX",
    help="TensorRT batch profile (default 1:8:32, capped by the export's max batch); --batch is its old name.",
)
@option("--workspace", type=click.IntRange(min=1), help="TensorRT workspace limit in MiB.")
@option("--opt-level", type=click.IntRange(0, 5), help="TensorRT builder optimization level (default 3).")
@option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="TensorRT timing cache file, reused across builds.",
)
@option("--hardware-compat", is_flag=True, help="TensorRT engine for any Ampere-or-newer GPU.")
@option(
    "--version-compat", is_flag=True, help="TensorRT engine for later releases of the same major version."
)
@option("--implicit-int8", is_flag=True, help="TensorRT 10.x legacy INT8 calibrator instead of Q/DQ.")
@option(
    "--bf16",
    is_flag=True,
    help="BF16: the FP32 IR run in bfloat16 (OpenVINO); refused on a CPU without BF16 units.",
)
@option(
    "--float-type",
    type=click.Choice(("f32", "bf16", "f16")),
    help="OpenVINO: pin the float layers' type (default: the fastest measured here).",
)
@option(
    "--hint",
    type=click.Choice(("latency", "throughput")),
    help="OpenVINO: pin the performance hint (default: measured at --probe-batch).",
)
@option(
    "--dla-core",
    type=click.IntRange(min=0),
    default=None,
    help="TensorRT: build for this DLA core of a Jetson (FP16/INT8 ONNX); refused where there is none.",
)
@option(
    "--gpu-fallback",
    is_flag=True,
    help="TensorRT with --dla-core: run layers the DLA cannot on the GPU (trtexec --allowGPUFallback).",
)
@option(
    "--sparsity",
    is_flag=True,
    help="TensorRT: allow 2:4-sparse kernels for 2:4-sparse weights (Ampere or newer).",
)
@option(
    "--gate/--no-gate",
    default=True,
    show_default=True,
    help="Refuse to publish FP16/INT8 whose parity with FP32 misses verify's thresholds (--no-gate: publish, "
    "recorded in the manifest).",
)
@option(
    "--repair/--no-repair",
    default=True,
    show_default=True,
    help="INT8 that misses the gate is repaired (cross-layer equalization, then the fewest float layers) and "
    "the first file that passes is published (--no-repair: refused, naming the worst layers).",
)
@option(
    "--min-int8-mac-share",
    type=click.FloatRange(0, 1),
    default=Later("sedeploy.building.options", "DEFAULT_MIN_INT8_MAC_SHARE"),
    show_default=True,
    help="A repair keeps at least this share of the MACs in INT8.",
)
@option(
    "--probe-batch",
    "probe_batches",
    type=click.IntRange(min=1),
    multiple=True,
    help="--backend auto on a CPU: batch size the ONNX Runtime / OpenVINO probe times (repeatable; default 1 and 8).",
)
@option("-o", "--output", type=click.Path(dir_okay=False), help="Output path of the main artifact.")
@JSON_OUTPUT
def build_engine_command(
    model: str,
    fp16: bool,
    int8: bool,
    backend: str,
    target: str | None,
    calib_dir: str | None,
    calib_size: int,
    calib_method: str,
    sweep_data: str | None,
    high_precision: str | None,
    min_precision_share: float,
    percentile: float,
    quantize_se: bool | None,
    every_tensor_int8: bool,
    recalibrate: bool,
    fp16_block_list: str,
    seed: int,
    img_size: str | None,
    mean: str | None,
    std: str | None,
    in_chans: int | None,
    batch_profile: str | None,
    workspace: int | None,
    opt_level: int | None,
    timing_cache: str | None,
    hardware_compat: bool,
    version_compat: bool,
    implicit_int8: bool,
    bf16: bool,
    float_type: str | None,
    hint: str | None,
    dla_core: int | None,
    gpu_fallback: bool,
    sparsity: bool,
    gate: bool,
    repair: bool,
    min_int8_mac_share: float,
    probe_batches: tuple[int, ...],
    output: str | None,
    json_out: str | None,
) -> None:
    """Build an FP32, FP16 or INT8 artifact of MODEL (an exported .onnx) for ONNX Runtime or TensorRT.

    MODEL may also be a quantization-aware export (train --qat): --int8 builds it as it is, with its learned
    scales, judged against its float twin on the fine-tuning's validation images.
    """
    if sum((fp16, int8, bf16)) > 1:
        raise click.UsageError("give at most one of --fp16, --bf16 and --int8")
    if bf16 and backend == "auto":
        backend = "openvino"  # BF16 is built for OpenVINO only
    from sedeploy.backends.tensorrt.compat import TensorRTOptions
    from sedeploy.build import BuildOptions, build_engine
    from sedeploy.building import DEFAULT_PROBE_BATCHES

    overrides = {
        "img_size": parse_img_size(img_size),
        "mean": parse_floats(mean, "--mean"),
        "std": parse_floats(std, "--std"),
        "channels": in_chans,
    }
    tensorrt = TensorRTOptions(
        profile=batch_profile,
        workspace=workspace * 2**20 if workspace else None,
        opt_level=opt_level,
        timing_cache=str(timing_cache) if timing_cache else None,
        hardware_compat=hardware_compat,
        version_compat=version_compat,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        sparsity=sparsity,
    )
    options = BuildOptions(
        precision="int8" if int8 else "fp16" if fp16 else "bf16" if bf16 else "fp32",
        backend=backend,
        target=target,
        calib_dir=Path(calib_dir) if calib_dir else None,
        calib_size=calib_size,
        calib_method=calib_method,
        sweep_data=Path(sweep_data) if sweep_data else None,
        high_precision=high_precision,
        min_precision_share=min_precision_share,
        percentile=percentile,
        quantize_se=quantize_se,
        every_tensor_int8=every_tensor_int8,
        recalibrate=recalibrate,
        fp16_block_list=tuple(op for op in fp16_block_list.split(",") if op),
        seed=seed,
        preprocessing_overrides={key: value for key, value in overrides.items() if value is not None},
        tensorrt=tensorrt,
        implicit_int8=implicit_int8,
        probe_batches=tuple(probe_batches) or DEFAULT_PROBE_BATCHES,
        gate=gate,
        repair=repair,
        min_int8_mac_share=min_int8_mac_share,
        float_type=float_type,
        hint=hint,
    )
    check_json_out(json_out)
    result = build_engine(model, options, output=output, progress=progress_wanted(json_out))
    emit(result, json_out)


@click.command("optimize")
@click.argument("model", type=click.Path(dir_okay=False))
@option("--calib-dir", type=click.Path(), help="Calibration images for INT8 (default: calibration/).")
@option("--calib-size", type=click.IntRange(min=1), default=_CALIBRATION_SIZE, show_default=True)
@option(
    "--data",
    type=click.Path(),
    required=True,
    help="Held-out images (class sub-folders give labels) or .npy of preprocessed inputs to judge each candidate on.",
)
@option(
    "--max-drop",
    type=click.FloatRange(0, 100),
    help=Later(
        "sedeploy.optimize",
        "DEFAULT_MAX_DROP",
        "Largest top-1 accuracy drop in points; without labels, largest share of changed top-1 "
        "(default: {}).".format,
    ),
)
@option(
    "--min-agreement", type=click.FloatRange(0, 1), help="Smallest share of images whose top-1 stays FP32's."
)
@option("--min-cos", type=click.FloatRange(0, 1), help="Smallest per-image cosine with FP32's logits.")
@batch_option(
    "Batch size the candidates are timed at.",
    default=Later("sedeploy.optimize", "DEFAULT_BATCH"),
    show_default=True,
)
@option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=Later("sedeploy.optimize", "DEFAULT_MAX_MINUTES"),
    show_default=True,
    help="No candidate is started after this; what was built is still timed and reported.",
)
@option("--backends", metavar="LIST", help="Backends to try, comma-separated (default: all present).")
@option("--precisions", metavar="LIST", help="Precisions to try, comma-separated (default: all).")
@option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Timed seconds per candidate (over --rounds interleaved rounds).",
)
@option(
    "--rounds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Interleaved timing rounds (the demo's quick search uses 1).",
)
@option(
    "-o", "--output", type=click.Path(), help="Name of the kept artifact (default: MODEL.best + its suffix)."
)
@option("--markdown", type=click.Path(dir_okay=False), help="Write the table as Markdown.")
@option("--plot", type=click.Path(dir_okay=False), help="PNG of img/s against accuracy drop (Pareto front).")
@option("--no-reuse", is_flag=True, help="Search again even when the recorded search still applies.")
@JSON_OUTPUT
@click.pass_context
def optimize_command(
    ctx: click.Context,
    model: str,
    calib_dir: str | None,
    calib_size: int,
    data: str,
    max_drop: float | None,
    min_agreement: float | None,
    min_cos: float | None,
    batch: int,
    max_minutes: float,
    backends: str | None,
    precisions: str | None,
    seconds: float,
    rounds: int,
    output: str | None,
    markdown: str | None,
    plot: str | None,
    no_reuse: bool,
    json_out: str | None,
) -> None:
    """Find the fastest artifact of MODEL within a fidelity budget on this machine, and keep it.

    Builds every candidate (backend x precision x INT8 calibration x runner settings), checks each on
    --data against FP32, times them interleaved at --batch and keeps the fastest within the budget as
    MODEL.best.* (exit 1 when none meets it).
    """
    check_json_out(json_out)
    from sedeploy.optimize import BACKEND_CHOICES, PRECISION_CHOICES, optimize

    report = optimize(
        model,
        calib_dir=calib_dir,
        data=data,
        max_drop=max_drop,
        min_agreement=min_agreement,
        min_cosine=min_cos,
        batch=batch,
        max_minutes=max_minutes,
        backends=parse_names(backends, BACKEND_CHOICES, "--backends"),
        precisions=parse_names(precisions, PRECISION_CHOICES, "--precisions"),
        calib_size=calib_size,
        output=output,
        seconds=seconds,
        rounds=rounds,
        reuse=not no_reuse,
        markdown=markdown,
        plot=plot,
        progress=progress_wanted(json_out),
    )
    emit(report, json_out)
    if not report.passed:
        fix = (
            "loosen the budget or allow more candidates"
            if report.search.closest is not None
            else "each candidate's reason is in the table"
        )
        click.echo(f"error: {report.search.reason()}; {fix}", err=True)
        ctx.exit(1)
