"""The ``sedeploy`` command line: it parses arguments and calls the library, nothing more.

Errors raised by the library become one line on stderr and an exit code (2 for
usage, 1 for failure); ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click

from sedeploy._version import __version__
from sedeploy.backends.audit import DEFAULT_MIN_PRECISION_SHARE
from sedeploy.backends.tensorrt.compat import TensorRTOptions
from sedeploy.bench import bench, write_reports
from sedeploy.build import (
    BACKENDS,
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_PROBE_BATCHES,
    BuildOptions,
    build_engine,
)
from sedeploy.demo import DEFAULT_OUT, run_demo
from sedeploy.errors import SedeployError
from sedeploy.export import DEFAULT_MAX_BATCH, DEFAULT_OPSET, export_onnx
from sedeploy.files import check_writable, remove_unfinished_temps, write_json_atomic
from sedeploy.info import model_info
from sedeploy.ladder import compare
from sedeploy.models.checkpoint import LAYOUTS
from sedeploy.optimize import (
    BACKEND_CHOICES,
    DEFAULT_MAX_DROP,
    DEFAULT_MAX_MINUTES,
    PRECISION_CHOICES,
    optimize,
)
from sedeploy.optimize import DEFAULT_BATCH as DEFAULT_OPTIMIZE_BATCH
from sedeploy.precision import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_PERCENTILE,
    FLAVOURS,
    HIGH_PRECISIONS,
)
from sedeploy.predict import predict
from sedeploy.serving.loadtest import (
    DEFAULT_DURATION_S,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_TOLERANCE,
    loadtest,
    parse_concurrency,
)
from sedeploy.serving.server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_TOP_K,
    serve,
    serve_forever,
)
from sedeploy.serving.triton import (
    DEFAULT_QUEUE_DELAY_US,
    KINDS,
    ServingOptions,
    check_repository,
    write_repository,
)
from sedeploy.train import (
    DEVICES,
    SCHEDULES,
    EpochMetrics,
    TrainConfig,
    plain_comparison_text,
    train,
    train_with_plain_twin,
)
from sedeploy.verify import DEFAULT_IMAGES, DEFAULT_SYNTHETIC, DEFAULT_THRESHOLDS, verify

LIBRARY_NAMES: dict[str, str] = {
    "profile": "batch_profile",
    "min_cosine": "min_cos",
    "channels": "in_chans",
    "model": "model_target",
    "duration_s": "duration",
    "version": "first_version",
}
"""Library parameter names whose CLI option is named otherwise (library name -> click parameter name)."""


def in_cli_words(error: SedeployError, command: click.Command | None) -> str:
    """The error's message with the library's parameter names replaced by ``command``'s flags.

    ``name=True`` becomes the flag, ``name=False`` its ``--no-`` form; a bare name is replaced when it is
    an identifier with an underscore (``calib_size``) or one the error lists in ``params`` (``labels``).
    """
    message = str(error)
    if command is None:
        return message
    flags: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name:
            flags[param.name] = param
    for library, cli_name in LIBRARY_NAMES.items():
        if cli_name in flags and library not in flags:
            flags[library] = flags[cli_name]
    for name, option in sorted(flags.items(), key=lambda item: -len(item[0])):
        flag = max(option.opts, key=len)
        negative = max(option.secondary_opts, key=len) if option.secondary_opts else flag
        message = re.sub(rf"(?<![\w-]){name}=True\b", flag, message)
        message = re.sub(rf"(?<![\w-]){name}=False\b", negative, message)
        if "_" in name or name in error.params:
            message = re.sub(rf"(?<![\w.-]){name}\b(?!=)", flag, message)
    return message


class _Group(click.Group):
    """A click group that turns sedeploy's errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.exceptions.ClickException as error:
            command = error.ctx.command_path if isinstance(error, click.UsageError) and error.ctx else None
            hint = f" (see '{command} --help')" if command else ""
            message = " ".join(error.format_message().split())
            click.echo(f"error: {message}{hint}", err=True)
            ctx.exit(error.exit_code)
        except SedeployError as error:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            subcommand = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"error: {in_cli_words(error, subcommand)}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt as interrupt:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            # Cleanup (temporary files, staged artifacts) ran while the interrupt propagated; a file made just
            # before the signal, ahead of the code that would remove it, is removed here.
            remove_unfinished_temps()
            name = "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
            click.echo(
                f"error: interrupted by {name}; no partial artifact or temporary file was left, "
                "run the command again to finish",
                err=True,
            )
            ctx.exit(143 if name == "SIGTERM" else 130)
        except Exception as error:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            click.echo(
                f"error: unexpected {type(error).__name__}: {error} (run with -v for the traceback)", err=True
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="sedeploy")
@click.option("-v", "--verbose", is_flag=True, help="Log details and show tracebacks on errors.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress: neither bars nor, without a terminal, progress lines."
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Take an SE-ResNet from checkpoint to fast, verified inference."""
    ctx.meta["sedeploy.verbose"] = verbose
    ctx.meta["sedeploy.quiet"] = quiet
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # Without a terminal, long steps report as INFO lines of this logger (sedeploy.progress).
    logging.getLogger("sedeploy.progress").setLevel(logging.WARNING if quiet else logging.INFO)


def _progress(json_out: str | None = None) -> bool:
    """Whether a command shows progress: not with --quiet, nor when its JSON goes to stdout."""
    ctx = click.get_current_context()
    return not ctx.meta.get("sedeploy.quiet", False) and json_out != "-"


_JSON = click.option(
    "--json",
    "json_out",
    metavar="[FILE]",
    is_flag=False,
    flag_value="-",
    default=None,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The report as JSON: alone, on stdout instead of the text; --json FILE writes it there as well.",
)
"""One meaning of --json in every reporting command."""


def _check_json_out(json_out: str | None) -> None:
    """Fail before any work when --json FILE could not be written."""
    if json_out and json_out != "-":
        check_writable(json_out)


def _emit(report: Any, json_out: str | None) -> None:
    """Print ``report`` (``to_text``), or its JSON (``to_dict``) to stdout or a file, as --json says."""
    if json_out == "-":
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if json_out:
        write_json_atomic(json_out, report.to_dict())
    click.echo(report.to_text())


_IN_CHANS = click.option(
    "--in-chans",
    type=click.IntRange(min=1),
    help="Input channels (1: grayscale, 3: RGB; images come in as one of them).",
)
_MAX_BATCH_SERVED = click.option(
    "--max-batch", type=click.IntRange(min=1), help="Largest batch (default: the artifact's max batch)."
)
_INSTANCES = click.option(
    "--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances."
)
_DEVICE = click.option(
    "--device",
    help="Where the artifact runs: cpu, cuda[:N] or tensorrt[:N] (ONNX Runtime), a GPU index (TensorRT), "
    "CPU/GPU (OpenVINO), cpu or cuda (PyTorch).",
)


def _batch_option(help: str, **kwargs: Any) -> Any:
    """--batch: the batch size a command runs at (bench: several, comma-separated)."""
    kwargs.setdefault("type", click.IntRange(min=1))
    return click.option("--batch", help=help, **kwargs)


def _parse_img_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(part) for part in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"{value!r} is not a size; use N or HxW, e.g. 224 or 473x473")
    return (parts[0], parts[1])


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE, e.g. reduction=8", param_hint="--option")
        try:
            options[key.replace("-", "_")] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key.replace("-", "_")] = raw
    return options


_IMG_SIZE = click.option("--img-size", help="Input size, N or HxW (default: the model's, 224).")
_NUM_CLASSES = click.option("--num-classes", type=click.IntRange(min=1), help="Number of output classes.")
_MODEL_OPTIONS = click.option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other model option (or factory argument), e.g. -O reduction=8 -O 'widths=(32,64,128)' (repeatable).",
)
"""Options shared by the commands that build a model (info, export, train)."""


@cli.command()
@click.argument("arch", required=False)
@_IMG_SIZE
@_IN_CHANS
@_NUM_CLASSES
@_MODEL_OPTIONS
@click.option(
    "--host",
    "host_only",
    is_flag=True,
    help="Describe this machine instead: CPU, matrix units (AMX, VNNI, BF16, FP16), oneDNN cap, versions.",
)
@_JSON
def info(
    arch: str | None,
    img_size: str | None,
    in_chans: int | None,
    num_classes: int | None,
    options: tuple[str, ...],
    host_only: bool,
    json_out: str | None,
) -> None:
    """Parameters, GMACs/GFLOPs, per-stage breakdown and SE overhead of ARCH (or, with --host, this machine)."""
    if host_only:
        from sedeploy.host import host_report, host_report_text

        machine = host_report()
        if json_out == "-":
            click.echo(json.dumps(machine, indent=2))
            return
        if json_out:
            write_json_atomic(json_out, machine)
        click.echo(host_report_text(machine))
        return
    if arch is None:
        raise click.UsageError("give ARCH, or --host to describe this machine")
    model_options = _parse_options(options)
    if in_chans is not None:
        model_options["in_chans"] = in_chans
    if num_classes is not None:
        model_options["num_classes"] = num_classes
    report = model_info(arch, img_size=_parse_img_size(img_size), **model_options)
    _emit(report, json_out)


@cli.command()
@click.argument("arch", required=False)
@click.option(
    "--model",
    "model_target",
    metavar="PACKAGE.MODULE:FACTORY",
    help="Export your own nn.Module: a callable returning it (instead of ARCH).",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="safetensors or PyTorch checkpoint.")
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="auto",
    show_default=True,
    help="State-dict layout of --weights.",
)
@_NUM_CLASSES
@_IN_CHANS
@_IMG_SIZE
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names: one per line, or a JSON list.")
@click.option(
    "--opset", type=click.IntRange(min=1), default=DEFAULT_OPSET, show_default=True, help="ONNX opset."
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BATCH,
    show_default=True,
    help="Largest batch later stages plan for (recorded in the metadata).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Output file (default: models/<name>/model.onnx)."
)
@click.option("--no-check", is_flag=True, help="Skip the PyTorch vs ONNX Runtime parity check.")
@click.option(
    "--override",
    is_flag=True,
    help="Export with sizes or labels that contradict the weights' training record (model.json).",
)
@_MODEL_OPTIONS
@_JSON
def export(
    arch: str | None,
    model_target: str | None,
    weights: str | None,
    layout: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: str | None,
    labels: str | None,
    opset: int,
    max_batch: int,
    output: str | None,
    no_check: bool,
    options: tuple[str, ...],
    override: bool,
    json_out: str | None,
) -> None:
    """Export ARCH (or --model) with its weights to a validated ONNX file with sedeploy metadata.

    Weights with a training record beside them (model.json, as `sedeploy train` writes) need no ARCH,
    --img-size, --in-chans or --labels: the record gives them.
    """
    if arch is not None and model_target is not None:
        raise click.UsageError("give either ARCH or --model PACKAGE.MODULE:FACTORY, not both")
    if arch is None and model_target is None and weights is None:
        raise click.UsageError(
            "give ARCH, --model PACKAGE.MODULE:FACTORY, or --weights with a training record"
        )
    if model_target is not None and ":" not in model_target:
        raise click.BadParameter(f"{model_target!r} is not package.module:factory", param_hint="--model")
    result = export_onnx(
        arch or model_target,
        weights=weights,
        layout=layout,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=_parse_img_size(img_size),
        labels=labels,
        opset=opset,
        max_batch=max_batch,
        output=output,
        check=not no_check,
        options=_parse_options(options),
        override=override,
        progress=_progress(json_out),
    )
    _emit(result, json_out)


def _parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of numbers", param_hint=option
        ) from None


@cli.command("build-engine")
@click.argument("model", type=click.Path())
@click.option("--fp16", is_flag=True, help="FP16-typed graph (FP32 inputs and outputs kept).")
@click.option("--int8", is_flag=True, help="INT8 with explicit Q/DQ, calibrated on --calib-dir.")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="auto: TensorRT when TensorRT and an NVIDIA GPU are present; on a CPU with OpenVINO installed, builds "
    "for ONNX Runtime and OpenVINO, times both and uses the faster; else ONNX Runtime.",
)
@click.option(
    "--target",
    type=click.Choice(FLAVOURS),
    help="INT8 flavour: tensorrt (signed, symmetric) or cpu (unsigned activations; fast on x86). "
    "Default: the backend's device.",
)
@click.option("--calib-dir", type=click.Path(), help="Calibration images (default: calibration/).")
@click.option("--calib-size", type=click.IntRange(min=1), default=DEFAULT_CALIBRATION_SIZE, show_default=True)
@click.option(
    "--calib-method",
    type=click.Choice((*CALIBRATION_METHODS, "sweep")),
    default=DEFAULT_CALIBRATION_METHOD,
    show_default=True,
    help="entropy: TensorRT's (2048-bin histogram, KL over 128 levels); sweep: try every method with the SE "
    "path float and quantized, measure each on --data, keep the most faithful.",
)
@click.option(
    "--data",
    "sweep_data",
    type=click.Path(),
    help="--calib-method sweep: held-out images (class folders for accuracy) each candidate is measured on.",
)
@click.option(
    "--high-precision",
    type=click.Choice(HIGH_PRECISIONS),
    help="INT8 tensorrt flavour: type of the layers left out of INT8 (default fp16, as ModelOpt).",
)
@click.option(
    "--min-precision-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MIN_PRECISION_SHARE,
    show_default=True,
    help="Fail when the asked precision runs less than this share of the MACs after the backend optimised "
    "the graph (precision audit).",
)
@click.option(
    "--percentile",
    type=float,
    default=DEFAULT_PERCENTILE,
    show_default=True,
    help="For --calib-method percentile.",
)
@click.option(
    "--quantize-se/--float-se",
    default=None,
    help="Quantize the SE excitation path, or keep it in float (default: quantized for --target cpu, "
    "float for tensorrt).",
)
@click.option("--recalibrate", is_flag=True, help="Ignore a cached calibration.")
@click.option(
    "--fp16-block-list",
    default="",
    help="Extra op types kept in FP32, comma-separated (e.g. Sigmoid,Softmax).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--img-size", help="Input size N or HxW, for an ONNX without sedeploy metadata.")
@click.option("--mean", help="Per-channel mean on [0, 1] pixels, comma-separated (no-metadata ONNX).")
@click.option("--std", help="Per-channel std, comma-separated (no-metadata ONNX).")
@_IN_CHANS
@click.option(
    "--batch-profile",
    "--batch",
    "batch_profile",
    metavar="MIN:OPT:MAX",
    help="TensorRT batch profile (default 1:8:32, capped by the export's max batch); --batch is its old name.",
)
@click.option("--workspace", type=click.IntRange(min=1), help="TensorRT workspace limit in MiB.")
@click.option(
    "--opt-level", type=click.IntRange(0, 5), help="TensorRT builder optimization level (default 3)."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="TensorRT timing cache file, reused across builds.",
)
@click.option("--hardware-compat", is_flag=True, help="TensorRT engine for any Ampere-or-newer GPU.")
@click.option(
    "--version-compat", is_flag=True, help="TensorRT engine for later releases of the same major version."
)
@click.option("--implicit-int8", is_flag=True, help="TensorRT 10.x legacy INT8 calibrator instead of Q/DQ.")
@click.option(
    "--bf16",
    is_flag=True,
    help="BF16: the FP32 IR run in bfloat16 (OpenVINO); refused on a CPU without BF16 units.",
)
@click.option(
    "--float-type",
    type=click.Choice(("f32", "bf16", "f16")),
    help="OpenVINO: pin the float layers' type (default: the fastest measured here).",
)
@click.option(
    "--hint",
    type=click.Choice(("latency", "throughput")),
    help="OpenVINO: pin the performance hint (default: measured at --probe-batch).",
)
@click.option(
    "--dla-core",
    type=click.IntRange(min=0),
    default=None,
    help="TensorRT: build for this DLA core of a Jetson (FP16/INT8 ONNX); refused where there is none.",
)
@click.option(
    "--gpu-fallback",
    is_flag=True,
    help="TensorRT with --dla-core: run layers the DLA cannot on the GPU (trtexec --allowGPUFallback).",
)
@click.option(
    "--sparsity",
    is_flag=True,
    help="TensorRT: allow 2:4-sparse kernels for 2:4-sparse weights (Ampere or newer).",
)
@click.option(
    "--gate/--no-gate",
    default=True,
    show_default=True,
    help="Refuse to publish FP16/INT8 whose parity with FP32 misses verify's thresholds (--no-gate: publish, "
    "recorded in the manifest).",
)
@click.option(
    "--probe-batch",
    "probe_batches",
    type=click.IntRange(min=1),
    multiple=True,
    help="--backend auto on a CPU: batch size the ONNX Runtime / OpenVINO probe times (repeatable; default 1 and 8).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output path of the main artifact.")
@_JSON
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
    probe_batches: tuple[int, ...],
    output: str | None,
    json_out: str | None,
) -> None:
    """Build an FP32, FP16 or INT8 artifact of MODEL (an exported .onnx) for ONNX Runtime or TensorRT."""
    if sum((fp16, int8, bf16)) > 1:
        raise click.UsageError("give at most one of --fp16, --bf16 and --int8")
    if bf16 and backend == "auto":
        backend = "openvino"  # BF16 is built for OpenVINO only
    overrides = {
        "img_size": _parse_img_size(img_size),
        "mean": _parse_floats(mean, "--mean"),
        "std": _parse_floats(std, "--std"),
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
        recalibrate=recalibrate,
        fp16_block_list=tuple(op for op in fp16_block_list.split(",") if op),
        seed=seed,
        preprocessing_overrides={key: value for key, value in overrides.items() if value is not None},
        tensorrt=tensorrt,
        implicit_int8=implicit_int8,
        probe_batches=tuple(probe_batches) or DEFAULT_PROBE_BATCHES,
        gate=gate,
        float_type=float_type,
        hint=hint,
    )
    _check_json_out(json_out)
    result = build_engine(model, options, output=output, progress=_progress(json_out))
    _emit(result, json_out)


def _epoch_line(metrics: EpochMetrics) -> None:
    click.echo(
        f"epoch {metrics.epoch}: loss {metrics.train_loss:.4f}, train accuracy {100 * metrics.train_accuracy:.2f}%, "
        f"val loss {metrics.val_loss:.4f}, val accuracy {100 * metrics.val_accuracy:.2f}%, "
        f"{metrics.images_per_second:.0f} img/s, {metrics.seconds:.1f} s",
        err=True,
    )


@cli.command("train")
@click.argument("data_dir", type=click.Path())
@click.option("--arch", required=True, help="Zoo model to train, e.g. se_resnet50 or se_preact_resnet.")
@_IMG_SIZE
@_IN_CHANS
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True)
@click.option("--val-split", type=float, default=0.2, show_default=True, help="Share kept to validate on.")
@click.option("--val-dir", type=click.Path(), help="Validation ImageFolder (instead of --val-split).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Initial weights to fine-tune (any layout).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hflip", is_flag=True, help="Also flip images horizontally (not for digits or text).")
@click.option("--no-augment", is_flag=True, help="Train on the images as they are.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run saved in the output folder.")
@click.option("--compare-plain", is_flag=True, help="Also train the plain twin (no SE), same settings.")
@_MODEL_OPTIONS
@click.option("-o", "--output", type=click.Path(file_okay=False), default="runs/train", show_default=True)
@_JSON
def train_command(
    data_dir: str,
    arch: str,
    img_size: str | None,
    in_chans: int | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    schedule: str,
    val_split: float,
    val_dir: str | None,
    weights: str | None,
    seed: int,
    hflip: bool,
    no_augment: bool,
    device: str,
    resume: bool,
    compare_plain: bool,
    options: tuple[str, ...],
    output: str,
    json_out: str | None,
) -> None:
    """Train ARCH on DATA_DIR (one sub-folder per class); keep the best checkpoint, its record and curves."""
    if resume and compare_plain:
        raise click.UsageError("--resume continues one run; give it without --compare-plain")
    config = TrainConfig(
        arch=arch,
        img_size=_parse_img_size(img_size),
        in_chans=in_chans,
        options=_parse_options(options),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        val_split=val_split,
        val_dir=Path(val_dir) if val_dir else None,
        weights=Path(weights) if weights else None,
        seed=seed,
        hflip=hflip,
        augment=not no_augment,
        device=device,
    )
    progress = _progress(json_out)
    on_epoch = None if json_out == "-" else _epoch_line
    _check_json_out(json_out)
    if compare_plain:
        results = train_with_plain_twin(data_dir, config, output, progress=progress, on_epoch=on_epoch)
        both = {"se": results[0].to_dict(), "plain": results[1].to_dict()}
        if json_out and json_out != "-":
            write_json_atomic(json_out, both)
        if json_out == "-":
            click.echo(json.dumps(both, indent=2))
        else:
            click.echo("\n\n".join(result.to_text() for result in results))
            click.echo("\n" + plain_comparison_text(*results))
        return
    result = train(data_dir, config, output, resume=resume, progress=progress, on_epoch=on_epoch)
    _emit(result, json_out)


def _parse_batch_sizes(value: str | None, option: str = "--preferred-batch") -> tuple[int, ...]:
    if not value:
        return ()
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r} is not a list of batch sizes; use e.g. 4,8", param_hint=option)
    return sizes


@cli.command("triton")
@click.argument("artifacts", nargs=-1, type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Model repository folder to write.")
@click.option("--name", help="Model name (default: the model's architecture).")
@click.option("--version", "first_version", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-precision", is_flag=True, help="One model per artifact, named NAME_<precision>.")
@_MAX_BATCH_SERVED
@click.option("--preferred-batch", help="Preferred batch sizes of the dynamic batcher, e.g. 4,8.")
@click.option(
    "--max-queue-delay-us", type=click.IntRange(min=0), default=DEFAULT_QUEUE_DELAY_US, show_default=True
)
@_INSTANCES
@click.option("--kind", type=click.Choice(KINDS), help="Instance kind (default: gpu; cpu for INT8 cpu ONNX).")
@click.option("--ort-trt-accelerator", is_flag=True, help="ONNX on GPU: ONNX Runtime hands it to TensorRT.")
@click.option("--force", is_flag=True, help="Replace a different model of the same name.")
@click.option(
    "--check", "check_path", type=click.Path(file_okay=False), help="Validate a repository instead."
)
@_JSON
def triton_command(
    artifacts: tuple[str, ...],
    output: str | None,
    name: str | None,
    first_version: int,
    per_precision: bool,
    max_batch: int | None,
    preferred_batch: str | None,
    max_queue_delay_us: int,
    instances: int,
    kind: str | None,
    ort_trt_accelerator: bool,
    force: bool,
    check_path: str | None,
    json_out: str | None,
) -> None:
    """Write a Triton Inference Server model repository for ARTIFACTS (ONNX or TensorRT engines), or --check one."""
    ctx = click.get_current_context()
    if check_path is not None:
        if artifacts or output:
            raise click.UsageError("--check REPO takes no artifacts and no -o")
        report = check_repository(check_path)
        _emit(report, json_out)
        ctx.exit(0 if report.ok else 1)
    if not artifacts or not output:
        raise click.UsageError("give one or more artifacts and -o MODEL_REPOSITORY (or --check REPO)")
    options = ServingOptions(
        max_batch=max_batch,
        preferred_batch=_parse_batch_sizes(preferred_batch),
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
        ort_trt_accelerator=ort_trt_accelerator,
    )
    result = write_repository(
        artifacts,
        output,
        name=name,
        version=first_version,
        per_precision=per_precision,
        options=options,
        force=force,
    )
    _emit(result, json_out)


@cli.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@_batch_option("Batch sizes to time, comma-separated.", type=str, default="1,8", show_default=True)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls per sample."
)
@click.option("--iterations", type=click.IntRange(min=1), help="Timed calls per artifact, batch and round.")
@click.option(
    "--duration", type=float, default=6.0, show_default=True, help="Timed seconds per artifact and batch."
)
@click.option(
    "--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved rounds."
)
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: all cores).")
@_JSON
@click.option(
    "--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Write a Markdown table here."
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of images/s vs batch."
)
@click.option(
    "--profile", is_flag=True, help="Add ONNX Runtime's per-op profile: share of kernel time per op type."
)
@click.option(
    "--compare",
    "compare_all",
    is_flag=True,
    help="ARTIFACT is an exported FP32 .onnx: find or build FP16, INT8 (cpu) and TensorRT FP16/INT8 (when "
    "present) beside it and bench them with PyTorch eager FP32 first.",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    help="With --compare: INT8 calibration images (default: build-engine's, calibration/).",
)
@click.option(
    "--calib-size",
    type=click.IntRange(min=1),
    help=f"With --compare: calibration images used (default {DEFAULT_CALIBRATION_SIZE}).",
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
        progress=_progress(json_out),
        profile=profile,
    )
    batch_sizes = _parse_batch_sizes(batch, "--batch")
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


def _thresholds_help(field: str, unit: str) -> str:
    return ", ".join(
        f"{precision} {getattr(limits, field)}{unit}" for precision, limits in DEFAULT_THRESHOLDS.items()
    )


@cli.command("verify")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--reference",
    metavar="ONNX|WEIGHTS|ARCH",
    help="What to compare with (default: the FP32 ONNX the artifact was built from, found via its manifest).",
)
@click.option(
    "--data",
    type=click.Path(),
    help="Image folder (class sub-folders give labels) or .npy of preprocessed inputs (default: synthetic).",
)
@click.option(
    "--num",
    type=click.IntRange(min=1),
    help=f"How many inputs (default: {DEFAULT_IMAGES} images, or {DEFAULT_SYNTHETIC} synthetic).",
)
@_batch_option("Batch size (default: 32, or the model's max batch).")
@click.option(
    "--min-cos",
    type=click.FloatRange(-1, 1),
    help=f"Lowest per-sample cosine similarity (default: {_thresholds_help('min_cosine', '')}).",
)
@click.option(
    "--max-top1-drop",
    type=click.FloatRange(0, 100),
    help="Largest top-1 accuracy drop (or share of changed top-1 without labels), percentage points "
    f"(default: {_thresholds_help('max_top1_drop', ' pp')}).",
)
@_DEVICE
@click.option(
    "--verify-hash/--no-verify-hash",
    default=True,
    show_default=True,
    help="Check the artifact against the sha256 its manifest records before loading it.",
)
@_JSON
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
    json_out: str | None,
) -> None:
    """Compare ARTIFACT with its reference on the same inputs; exit 0 on pass, 1 on fail, 2 on usage errors."""
    _check_json_out(json_out)
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
        progress=_progress(json_out),
    )
    _emit(report, json_out)
    if not report.passed:
        ctx.exit(1)


def _names(value: str | None, valid: tuple[str, ...], flag: str) -> tuple[str, ...] | None:
    """A comma-separated list of names from ``valid`` (None when not given)."""
    if value is None:
        return None
    names = tuple(name.strip().lower() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise click.BadParameter(
            f"{value!r}: choose from {', '.join(valid)} (comma-separated)", param_hint=flag
        )
    return names


@cli.command("optimize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib-dir", type=click.Path(), help="Calibration images for INT8 (default: calibration/).")
@click.option("--calib-size", type=click.IntRange(min=1), default=DEFAULT_CALIBRATION_SIZE, show_default=True)
@click.option(
    "--data",
    type=click.Path(),
    required=True,
    help="Held-out images (class sub-folders give labels) or .npy of preprocessed inputs to judge each candidate on.",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0, 100),
    help=f"Largest top-1 accuracy drop in points; without labels, largest share of changed top-1 "
    f"(default: {DEFAULT_MAX_DROP}).",
)
@click.option(
    "--min-agreement", type=click.FloatRange(0, 1), help="Smallest share of images whose top-1 stays FP32's."
)
@click.option("--min-cos", type=click.FloatRange(0, 1), help="Smallest per-image cosine with FP32's logits.")
@_batch_option("Batch size the candidates are timed at.", default=DEFAULT_OPTIMIZE_BATCH, show_default=True)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_MINUTES,
    show_default=True,
    help="No candidate is started after this; what was built is still timed and reported.",
)
@click.option("--backends", metavar="LIST", help="Backends to try, comma-separated (default: all present).")
@click.option("--precisions", metavar="LIST", help="Precisions to try, comma-separated (default: all).")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Timed seconds per candidate (over 3 interleaved rounds).",
)
@click.option(
    "-o", "--output", type=click.Path(), help="Name of the kept artifact (default: MODEL.best + its suffix)."
)
@click.option("--markdown", type=click.Path(dir_okay=False), help="Write the table as Markdown.")
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="PNG of img/s against accuracy drop (Pareto front)."
)
@click.option("--no-reuse", is_flag=True, help="Search again even when the recorded search still applies.")
@_JSON
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
    _check_json_out(json_out)
    report = optimize(
        model,
        calib_dir=calib_dir,
        data=data,
        max_drop=max_drop,
        min_agreement=min_agreement,
        min_cosine=min_cos,
        batch=batch,
        max_minutes=max_minutes,
        backends=_names(backends, BACKEND_CHOICES, "--backends"),
        precisions=_names(precisions, PRECISION_CHOICES, "--precisions"),
        calib_size=calib_size,
        output=output,
        seconds=seconds,
        reuse=not no_reuse,
        markdown=markdown,
        plot=plot,
        progress=_progress(json_out),
    )
    _emit(report, json_out)
    if not report.passed:
        fix = (
            "loosen the budget or allow more candidates"
            if report.search.closest is not None
            else "each candidate's reason is in the table"
        )
        click.echo(f"error: {report.search.reason()}; {fix}", err=True)
        ctx.exit(1)


@cli.command("inspect")
@click.argument("artifact", type=click.Path())
@click.option("--source", type=click.Path(), help="The exported .onnx it was built from, when not beside it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(artifact: str, source: str | None, as_json: bool) -> None:
    """What ARTIFACT is (manifest, model) and what precision each layer runs in after the backend optimised it."""
    from sedeploy.inspect import inspect_artifact

    report = inspect_artifact(artifact, source)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())


@cli.command("predict")
@click.argument("artifact", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per image.")
@_batch_option("Batch size (default: 32, or the model's max batch).")
@_DEVICE
@click.option(
    "--verify-hash/--no-verify-hash",
    default=True,
    show_default=True,
    help="Check the artifact against the sha256 its manifest records before loading it.",
)
@_JSON
def predict_command(
    artifact: str,
    images: tuple[str, ...],
    top_k: int,
    batch: int | None,
    device: str | None,
    verify_hash: bool,
    json_out: str | None,
) -> None:
    """Labels and probabilities of each image in IMAGE_OR_DIR... (folders are read recursively)."""
    _check_json_out(json_out)
    report = predict(
        artifact,
        images,
        top_k=top_k,
        batch=batch,
        device=device,
        verify_hash=verify_hash,
        progress=_progress(json_out),
    )
    _emit(report, json_out)


@cli.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=str(DEFAULT_OUT),
    show_default=True,
    help="Folder for the artifacts, report.md, report.json and the plots.",
)
@click.option(
    "--quick", is_flag=True, help="About a minute: fewer calibration images, short benches, no SE-ResNet-50."
)
@_JSON
@click.pass_context
def demo_command(ctx: click.Context, out_dir: str, quick: bool, json_out: str | None) -> None:
    """Export, quantize, build, verify and bench the shipped digits SE-ResNet, end to end."""
    report = run_demo(out_dir, quick=quick, progress=_progress(json_out))
    _emit(report, json_out)
    if not report.passed:
        ctx.exit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and cleanup handler runs before the process exits."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """First SIGTERM: unwind cleanly (exit code 143). A second one, during that cleanup, ends the process at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


@cli.command("serve")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option(
    "--name", help="Triton model name (default: the architecture; several artifacts add _<precision>)."
)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=DEFAULT_HTTP_PORT, show_default=True)
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=DEFAULT_GRPC_PORT, show_default=True)
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), default=DEFAULT_METRICS_PORT, show_default=True
)
@_MAX_BATCH_SERVED
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=DEFAULT_QUEUE_DELAY_US,
    show_default=True,
    help="How long the dynamic batcher may hold a request to fill a batch.",
)
@_INSTANCES
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=DEFAULT_TOP_K,
    show_default=True,
    help="Image endpoint default.",
)
@_DEVICE
@_JSON
def serve_command(
    artifacts: tuple[str, ...],
    name: str | None,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    max_batch: int | None,
    max_queue_delay_us: int,
    instances: int,
    top_k: int,
    device: str | None,
    json_out: str | None,
) -> None:
    """Serve ARTIFACT... behind Triton (HTTP, gRPC, metrics) until SIGINT or SIGTERM."""
    server = serve(
        artifacts,
        name=name,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        top_k=top_k,
        device=device,
    )

    def _ready(running: Any) -> None:
        _emit(running, json_out)
        sys.stdout.flush()

    reason = serve_forever(server, on_ready=_ready)
    click.echo(f"stopped ({reason})", err=True)


@cli.command("loadtest")
@click.argument("url")
@click.option("--model", required=True, help="Triton model name (the tensor endpoint).")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Concurrent clients per level.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DURATION_S,
    show_default=True,
    help="Seconds per level.",
)
@click.option(
    "--max-requests",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_REQUESTS,
    show_default=True,
    help="Requests per level at most.",
)
@_batch_option("Batch size of each request.", default=1, show_default=True)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="Largest difference from a request's answer alone that still counts as equal (GPU backends: 1e-3).",
)
@click.option("--metrics-url", help="Triton's metrics endpoint, used when the statistics API is restricted.")
@click.option("--access-token", envvar="TRITON_ACCESS_TOKEN", help="Token for a restricted statistics API.")
@click.option("--allow-remote", is_flag=True, help="Allow a server that is not on a loopback address.")
@_JSON
@click.pass_context
def loadtest_command(
    ctx: click.Context,
    url: str,
    model: str,
    concurrency: str,
    duration: float,
    max_requests: int,
    batch: int,
    tolerance: float,
    metrics_url: str | None,
    access_token: str | None,
    allow_remote: bool,
    json_out: str | None,
) -> None:
    """Load-test MODEL at URL (http://127.0.0.1:8000 or grpc://...): throughput, latency, server batches."""
    _check_json_out(json_out)
    report = loadtest(
        url,
        model,
        concurrency=parse_concurrency(concurrency),
        duration_s=duration,
        max_requests=max_requests,
        batch=batch,
        tolerance=tolerance,
        access_token=access_token,
        metrics_url=metrics_url,
        allow_remote=allow_remote,
    )
    _emit(report, json_out)
    if report.errors or report.mismatches:
        ctx.exit(1)


def main() -> None:
    """Console-script entry point; SIGTERM ends a run as cleanly as Ctrl-C (no temporary files, old artifacts intact)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="sedeploy")
