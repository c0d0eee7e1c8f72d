"""The ``sedeploy`` command line: it parses arguments and calls the library, nothing more.

Errors raised by the library become one line on stderr and an exit code (2 for
usage, 1 for failure); ``-v`` shows the traceback instead.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from sedeploy import __version__
from sedeploy.build import BACKENDS, DEFAULT_CALIBRATION_SIZE, BuildOptions, build_engine
from sedeploy.checkpoint import LAYOUTS
from sedeploy.errors import SedeployError
from sedeploy.export import DEFAULT_MAX_BATCH, DEFAULT_OPSET, export_onnx
from sedeploy.info import model_info
from sedeploy.quantize import CALIBRATION_METHODS, DEFAULT_PERCENTILE, FLAVOURS


class _Group(click.Group):
    """A click group that turns sedeploy's errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except SedeployError as error:
            if ctx.meta.get("sedeploy.verbose"):
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
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
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Take an SE-ResNet from checkpoint to fast, verified inference."""
    ctx.meta["sedeploy.verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


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


@cli.command()
@click.argument("arch")
@click.option("--img-size", help="Input size, N or HxW (default: the model's, 224).")
@click.option("--in-chans", type=click.IntRange(min=1), help="Input channels (1 for grayscale).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Number of output classes.")
@click.option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other model option, e.g. -O reduction=8 -O se_variant=pre (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info(
    arch: str,
    img_size: str | None,
    in_chans: int | None,
    num_classes: int | None,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Parameters, GMACs/GFLOPs, per-stage breakdown and SE overhead of ARCH."""
    model_options = _parse_options(options)
    if in_chans is not None:
        model_options["in_chans"] = in_chans
    if num_classes is not None:
        model_options["num_classes"] = num_classes
    report = model_info(arch, img_size=_parse_img_size(img_size), **model_options)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.to_text())


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
@click.option("--num-classes", type=click.IntRange(min=1), help="Number of output classes.")
@click.option("--in-chans", type=click.IntRange(min=1), help="Input channels (1 for grayscale).")
@click.option("--img-size", help="Input size, N or HxW (default: the model's, 224).")
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
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other model option (or factory argument), e.g. -O reduction=8 (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
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
    as_json: bool,
) -> None:
    """Export ARCH (or --model) with its weights to a validated ONNX file with sedeploy metadata."""
    if (arch is None) == (model_target is None):
        raise click.UsageError("give either ARCH or --model PACKAGE.MODULE:FACTORY")
    if model_target is not None and ":" not in model_target:
        raise click.BadParameter(f"{model_target!r} is not package.module:factory", param_hint="--model")
    result = export_onnx(
        arch or model_target or "",
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
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.to_text())


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
    help="auto: TensorRT when TensorRT and an NVIDIA GPU are present, else ONNX Runtime.",
)
@click.option(
    "--target",
    type=click.Choice(FLAVOURS),
    help="INT8 flavour: tensorrt (signed, symmetric) or cpu (unsigned activations; fast on x86). "
    "Default: the backend's device.",
)
@click.option("--calib-dir", type=click.Path(), help="Calibration images (default: calibration/).")
@click.option("--calib-size", type=click.IntRange(min=1), default=DEFAULT_CALIBRATION_SIZE, show_default=True)
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default="entropy", show_default=True)
@click.option(
    "--percentile",
    type=float,
    default=DEFAULT_PERCENTILE,
    show_default=True,
    help="For --calib-method percentile.",
)
@click.option(
    "--quantize-se", is_flag=True, help="Quantize the SE excitation path too (default: kept in float)."
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
@click.option("--in-chans", type=click.IntRange(1, 3), help="Input channels, 1 or 3 (no-metadata ONNX).")
@click.option(
    "--batch",
    "batch_profile",
    metavar="MIN:OPT:MAX",
    help="TensorRT batch profile (default 1:8:32, capped by the export's max batch).",
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
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output path of the main artifact.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build_engine_command(
    model: str,
    fp16: bool,
    int8: bool,
    backend: str,
    target: str | None,
    calib_dir: str | None,
    calib_size: int,
    calib_method: str,
    percentile: float,
    quantize_se: bool,
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
    output: str | None,
    as_json: bool,
) -> None:
    """Build an FP32, FP16 or INT8 artifact of MODEL (an exported .onnx) for ONNX Runtime or TensorRT."""
    if fp16 and int8:
        raise click.UsageError("give at most one of --fp16 and --int8")
    overrides = {
        "img_size": _parse_img_size(img_size),
        "mean": _parse_floats(mean, "--mean"),
        "std": _parse_floats(std, "--std"),
        "channels": in_chans,
    }
    tensorrt = {
        "profile": batch_profile,
        "workspace": workspace * 2**20 if workspace else None,
        "opt_level": opt_level,
        "timing_cache": timing_cache,
        "hardware_compat": hardware_compat,
        "version_compat": version_compat,
    }
    options = BuildOptions(
        precision="int8" if int8 else "fp16" if fp16 else "fp32",
        backend=backend,
        target=target,
        calib_dir=Path(calib_dir) if calib_dir else None,
        calib_size=calib_size,
        calib_method=calib_method,
        percentile=percentile,
        quantize_se=quantize_se,
        recalibrate=recalibrate,
        fp16_block_list=tuple(op for op in fp16_block_list.split(",") if op),
        seed=seed,
        preprocessing_overrides={key: value for key, value in overrides.items() if value is not None},
        tensorrt={key: value for key, value in tensorrt.items() if value not in (None, False)},
        implicit_int8=implicit_int8,
    )
    result = build_engine(model, options, output=output, progress=not as_json and sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.to_text())


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sedeploy")
