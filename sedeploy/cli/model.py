"""The commands that build a PyTorch model: ``info``, ``export``, ``train``.

Each command imports its library module when it runs, so parsing and ``--help`` need no PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sedeploy.cli.options import (
    IMG_SIZE,
    IN_CHANS,
    JSON_OUTPUT,
    MODEL_OPTIONS,
    NUM_CLASSES,
    Later,
    LaterChoice,
    check_json_out,
    emit,
    option,
    parse_img_size,
    parse_options,
    progress_wanted,
    write_json_file,
)

if TYPE_CHECKING:
    from sedeploy.train import EpochMetrics


@click.command()
@click.argument("arch", required=False)
@IMG_SIZE
@IN_CHANS
@NUM_CLASSES
@MODEL_OPTIONS
@option(
    "--host",
    "host_only",
    is_flag=True,
    help="Describe this machine instead: CPU, matrix units (AMX, VNNI, BF16, FP16), oneDNN cap, versions.",
)
@JSON_OUTPUT
def info(
    arch: str | None,
    img_size: str | None,
    in_chans: int | None,
    num_classes: int | None,
    options: tuple[str, ...],
    host_only: bool,
    json_out: str | None,
) -> None:
    """Parameters, GMACs/GFLOPs, per-stage breakdown and SE overhead of ARCH; an exported MODEL.onnx's metadata
    (no PyTorch needed); or, with --host, this machine."""
    if host_only:
        from sedeploy.host import host_report, host_report_text

        machine = host_report()
        if json_out == "-":
            click.echo(json.dumps(machine, indent=2))
            return
        if json_out:
            write_json_file(json_out, machine)
        click.echo(host_report_text(machine))
        return
    if arch is None:
        raise click.UsageError("give ARCH or MODEL.onnx, or --host to describe this machine")
    from sedeploy.info import is_onnx_path, model_info, onnx_info

    if is_onnx_path(arch):
        if img_size or in_chans is not None or num_classes is not None or options:
            raise click.UsageError("an exported ONNX has its own size and options; give MODEL.onnx alone")
        emit(onnx_info(arch), json_out)
        return
    model_options = parse_options(options)
    if in_chans is not None:
        model_options["in_chans"] = in_chans
    if num_classes is not None:
        model_options["num_classes"] = num_classes
    report = model_info(arch, img_size=parse_img_size(img_size), **model_options)
    emit(report, json_out)


@click.command()
@click.argument("arch", required=False)
@option(
    "--model",
    "model_target",
    metavar="PACKAGE.MODULE:FACTORY",
    help="Export your own nn.Module: a callable returning it (instead of ARCH).",
)
@option("--weights", type=click.Path(dir_okay=False), help="safetensors or PyTorch checkpoint.")
@option(
    "--layout",
    type=LaterChoice(Later("sedeploy.models.defaults", "LAYOUTS")),
    default="auto",
    show_default=True,
    help="State-dict layout of --weights.",
)
@NUM_CLASSES
@IN_CHANS
@IMG_SIZE
@option("--labels", type=click.Path(dir_okay=False), help="Class names: one per line, or a JSON list.")
@option(
    "--opset",
    type=click.IntRange(min=1),
    default=Later("sedeploy.models.defaults", "DEFAULT_OPSET"),
    show_default=True,
    help="ONNX opset.",
)
@option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=Later("sedeploy.models.defaults", "DEFAULT_MAX_BATCH"),
    show_default=True,
    help="Largest batch later stages plan for (recorded in the metadata).",
)
@option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Output file (default: models/<name>/model.onnx)."
)
@option("--no-check", is_flag=True, help="Skip the PyTorch vs ONNX Runtime parity check.")
@option(
    "--override",
    is_flag=True,
    help="Export with sizes or labels that contradict the weights' training record (model.json).",
)
@MODEL_OPTIONS
@JSON_OUTPUT
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
    from sedeploy.optional import import_optional

    import_optional("torch")  # export runs the PyTorch model: one line naming the extra without it
    from sedeploy.export import export_onnx

    result = export_onnx(
        arch or model_target,
        weights=weights,
        layout=layout,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=parse_img_size(img_size),
        labels=labels,
        opset=opset,
        max_batch=max_batch,
        output=output,
        check=not no_check,
        options=parse_options(options),
        override=override,
        progress=progress_wanted(json_out),
    )
    emit(result, json_out)


def _train_qat(
    data_dir: str,
    weights: str,
    target: str,
    quantize_se: bool | None,
    every_tensor_int8: bool,
    fixed_scales: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    val_split: float,
    val_dir: str | None,
    seed: int,
    device: str,
    output: str,
    json_out: str | None,
) -> None:
    """``train --qat``: export the checkpoint (its record gives the model), fine-tune, write the Q/DQ ONNX."""
    from sedeploy.optional import import_optional

    import_optional("torch")
    from sedeploy.export import export_onnx
    from sedeploy.precision.recipe import Int8Recipe
    from sedeploy.training.loop import TrainConfig
    from sedeploy.training.qat import export_qat, train_qat

    recipe = Int8Recipe(flavour=target, quantize_se=quantize_se, every_tensor_int8=every_tensor_int8)
    check_json_out(json_out)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    exported = export_onnx(weights=weights, output=folder / "model.fp32.onnx")
    config = TrainConfig(
        arch=exported.metadata.arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_split=val_split,
        val_dir=Path(val_dir) if val_dir else None,
        seed=seed,
        device=device,
    )
    on_epoch = None if json_out == "-" else _epoch_line
    result = train_qat(
        exported.path,
        data_dir,
        folder,
        recipe,
        config,
        learn_scales=not fixed_scales,
        progress=progress_wanted(json_out),
        on_epoch=on_epoch,
    )
    onnx_path = export_qat(folder, folder / f"model.int8-{target}.qat.onnx", folder / "model.qat-fp32.onnx")
    if json_out:
        report = {**result.to_dict(), "onnx": str(onnx_path)}
        if json_out == "-":
            click.echo(json.dumps(report, indent=2))
        else:
            write_json_file(json_out, report)
    if json_out != "-":
        click.echo(result.to_text() + f"\n  Q/DQ ONNX (learned scales): {onnx_path}")


def _epoch_line(metrics: EpochMetrics) -> None:
    click.echo(
        f"epoch {metrics.epoch}: loss {metrics.train_loss:.4f}, train accuracy {100 * metrics.train_accuracy:.2f}%, "
        f"val loss {metrics.val_loss:.4f}, val accuracy {100 * metrics.val_accuracy:.2f}%, "
        f"{metrics.images_per_second:.0f} img/s, {metrics.seconds:.1f} s",
        err=True,
    )


@click.command("train")
@click.argument("data_dir", type=click.Path())
@option("--arch", help="Zoo model to train, e.g. se_resnet50 or se_preact_resnet (not with --qat).")
@IMG_SIZE
@IN_CHANS
@option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@option("--batch", "batch_size", type=click.IntRange(min=2), default=64, show_default=True)
@option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW).")
@option("--weight-decay", type=float, default=0.05, show_default=True)
@option(
    "--schedule",
    type=LaterChoice(Later("sedeploy.training", "SCHEDULES")),
    default="cosine",
    show_default=True,
)
@option("--val-split", type=float, default=0.2, show_default=True, help="Share kept to validate on.")
@option("--val-dir", type=click.Path(), help="Validation ImageFolder (instead of --val-split).")
@option("--weights", type=click.Path(dir_okay=False), help="Initial weights to fine-tune (any layout).")
@option("--seed", type=int, default=0, show_default=True)
@option("--hflip", is_flag=True, help="Also flip images horizontally (not for digits or text).")
@option("--no-augment", is_flag=True, help="Train on the images as they are.")
@option(
    "--device", type=LaterChoice(Later("sedeploy.training", "DEVICES")), default="auto", show_default=True
)
@option("--resume", is_flag=True, help="Continue the run saved in the output folder.")
@option("--compare-plain", is_flag=True, help="Also train the plain twin (no SE), same settings.")
@option(
    "--qat", is_flag=True, help="Quantization-aware fine-tuning of --weights (a sedeploy train checkpoint)."
)
@option(
    "--target",
    type=click.Choice(["cpu", "tensorrt"]),
    default="cpu",
    show_default=True,
    help="With --qat: the INT8 flavour to fine-tune for.",
)
@option("--quantize-se", is_flag=True, default=None, help="With --qat: quantize the SE path too.")
@option(
    "--every-tensor-int8", is_flag=True, help="With --qat: every tensor INT8 (SE path, head; Jetson DLA)."
)
@option(
    "--fixed-scales", is_flag=True, help="With --qat: keep the calibrated scales, learn the weights only."
)
@MODEL_OPTIONS
@option("-o", "--output", type=click.Path(file_okay=False), default="runs/train", show_default=True)
@JSON_OUTPUT
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
    qat: bool,
    target: str,
    quantize_se: bool | None,
    every_tensor_int8: bool,
    fixed_scales: bool,
    options: tuple[str, ...],
    output: str,
    json_out: str | None,
) -> None:
    """Train ARCH on DATA_DIR (one sub-folder per class); keep the best checkpoint, its record and curves.

    With --qat, fine-tune the --weights checkpoint with INT8 fake quantizers where the --target recipe puts
    Q/DQ, and write that recipe's Q/DQ ONNX with the learned scales (build-engine builds it as it is).
    """
    if qat:
        if weights is None or arch is not None or resume or compare_plain:
            raise click.UsageError(
                "--qat needs --weights (its record names the model) and no --arch/--resume/--compare-plain"
            )
        _train_qat(
            data_dir,
            weights,
            target,
            quantize_se,
            every_tensor_int8,
            fixed_scales,
            epochs,
            batch_size,
            lr if lr != 2e-3 else 1e-4,
            val_split,
            val_dir,
            seed,
            device,
            output,
            json_out,
        )
        return
    if arch is None:
        raise click.UsageError("Missing option '--arch' (the zoo model to train)")
    if resume and compare_plain:
        raise click.UsageError("--resume continues one run; give it without --compare-plain")
    from sedeploy.optional import import_optional

    import_optional("torch")  # one line naming the extra where PyTorch is not installed
    from sedeploy.train import TrainConfig, plain_comparison_text, train, train_with_plain_twin

    config = TrainConfig(
        arch=arch,
        img_size=parse_img_size(img_size),
        in_chans=in_chans,
        options=parse_options(options),
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
    progress = progress_wanted(json_out)
    on_epoch = None if json_out == "-" else _epoch_line
    check_json_out(json_out)
    if compare_plain:
        results = train_with_plain_twin(data_dir, config, output, progress=progress, on_epoch=on_epoch)
        both = {"se": results[0].to_dict(), "plain": results[1].to_dict()}
        if json_out and json_out != "-":
            write_json_file(json_out, both)
        if json_out == "-":
            click.echo(json.dumps(both, indent=2))
        else:
            click.echo("\n\n".join(result.to_text() for result in results))
            click.echo("\n" + plain_comparison_text(*results))
        return
    result = train(data_dir, config, output, resume=resume, progress=progress, on_epoch=on_epoch)
    emit(result, json_out)
