"""``sedeploy train``: fit any zoo model to an ImageFolder, keeping the best checkpoint in sedeploy's layout.

Data
    ``data_dir`` is torchvision's ImageFolder layout (one sub-folder per class,
    at least two classes). Images are decoded and preprocessed once by
    :func:`sedeploy.data.load_image_set` with the model's own eval preprocessing,
    the one export later writes into the ONNX file, and held in memory
    (``C x H x W x 4`` bytes per image). Validation images come from ``val_dir``
    (same class names) or from a seeded ``val_split`` share of ``data_dir``.

Training
    Light augmentation on the preprocessed batch: a random affine (scale
    0.9-1.1, rotation +-10 degrees, shift up to 10% of the size, border pixels
    repeated) and, only when asked, horizontal flips (wrong for digits or text).
    AdamW (no weight decay on biases and BatchNorm) with a cosine schedule after a
    short linear warm-up, or a one-cycle schedule. The learning rate is a pure
    function of the step, and each epoch's shuffle and augmentation come from a
    generator seeded with ``(seed, epoch)``, so a resumed run continues exactly as
    an uninterrupted one would, and two runs with one seed give the same weights
    on the CPU (on CUDA, cuDNN is set to its deterministic algorithms for the run).

Outputs (in ``output_dir``)
    ``model.safetensors``: the best epoch's weights (highest validation accuracy,
    ties to the lower validation loss), written by :func:`sedeploy.models.checkpoint.save_checkpoint`
    so ``sedeploy export ARCH --weights`` reads arch and options from it;
    ``model.json``: arch, options, input size, labels, preprocessing, the settings,
    the metrics of every epoch and the export command; ``labels.txt``: one class
    name per line (``export --labels``); ``curves.png``: loss and accuracy per
    epoch; ``last.pt``: the latest epoch's weights and optimizer state, which
    ``resume`` continues from. Every file is written atomically after each epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.errors import ConfigError
from sedeploy.files import refuse_output_over_input, special_file_reason
from sedeploy.models.checkpoint import load_weights, save_checkpoint
from sedeploy.models.record import LABELS_NAME, RECORD_NAME
from sedeploy.models.registry import get_entry, model_defaults
from sedeploy.models.senet import RESNET_SE_OPTION_NAMES
from sedeploy.training.checkpoints import (
    CHECKPOINT_NAME,
    CURVES_NAME,
    RESUME_NAME,
    WRITTEN_NAMES,
    create_for_training,
    json_options,
    read_resume,
    save_resume,
    write_record,
)
from sedeploy.training.curves import plot_curves
from sedeploy.training.loop import (
    DEVICES,
    SCHEDULES,
    WARMUP_SHARE,
    EpochMetrics,
    TrainConfig,
    TrainingError,
    augment_batch,
    best_epoch_of,
    class_names,
    deterministic_cudnn,
    evaluate,
    learning_rate,
    load_data,
    move_optimizer_state,
    param_groups,
    resolve_device,
    train_epoch,
)

__all__ = [
    "CHECKPOINT_NAME",
    "CURVES_NAME",
    "DEVICES",
    "LABELS_NAME",
    "RECORD_NAME",
    "RESUME_NAME",
    "SCHEDULES",
    "WARMUP_SHARE",
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "augment_batch",
    "learning_rate",
    "plain_comparison_text",
    "plain_twin_config",
    "plot_curves",
    "train",
    "train_with_plain_twin",
]

logger = logging.getLogger(__name__)

PLAIN_DIR_NAME = "plain"
_SE_ONLY_OPTIONS = RESNET_SE_OPTION_NAMES


@dataclass(frozen=True)
class TrainResult:
    """What a training run wrote and how well the best epoch did."""

    arch: str
    options: dict[str, Any]
    input_size: tuple[int, int, int]
    labels: tuple[str, ...]
    checkpoint: Path
    record: Path
    curves: Path
    history: tuple[EpochMetrics, ...]
    best_epoch: int
    resumed_from: int
    params: int
    train_images: int
    val_images: int
    device: str
    seconds: float

    @property
    def best(self) -> EpochMetrics:
        return self.history[self.best_epoch - 1]

    @property
    def export_command(self) -> str:
        """The ``sedeploy export`` command line for the best checkpoint."""
        _, height, width = self.input_size
        labels = self.checkpoint.with_name(LABELS_NAME)
        return (
            f"sedeploy export {self.arch} --weights {shlex.quote(str(self.checkpoint))} "
            f"--img-size {height}x{width} --labels {shlex.quote(str(labels))}"
        )

    def written_files(self) -> list[str]:
        """Every file the run left in its folder, with its size: what a user should know is there."""
        folder = self.checkpoint.parent
        names = WRITTEN_NAMES
        return [
            f"{folder / name} ({_size_text((folder / name).stat().st_size)})"
            for name in names
            if (folder / name).is_file()
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "arch": self.arch,
            "options": self.options,
            "input_size": list(self.input_size),
            "labels": list(self.labels),
            "checkpoint": str(self.checkpoint),
            "record": str(self.record),
            "curves": str(self.curves),
            "written": self.written_files(),
            "best_epoch": self.best_epoch,
            "best": dataclasses.asdict(self.best),
            "history": [dataclasses.asdict(metrics) for metrics in self.history],
            "resumed_from": self.resumed_from,
            "params": self.params,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "device": self.device,
            "seconds": self.seconds,
            "export_command": self.export_command,
        }

    def to_text(self) -> str:
        """Human-readable summary."""
        best = self.best
        return "\n".join(
            [
                f"{self.arch} ({self.params:,} params) on {self.train_images} images, "
                f"{self.val_images} for validation, {len(self.history)} epochs on {self.device} "
                f"in {self.seconds:.1f} s",
                f"  best epoch {self.best_epoch}: val accuracy {100 * best.val_accuracy:.2f}%, "
                f"val loss {best.val_loss:.4f}",
                "  wrote " + ", ".join(self.written_files()),
                f"  export: {self.export_command}",
            ]
        )


def _size_text(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} kB"


def train(
    data_dir: str | os.PathLike[str],
    config: TrainConfig,
    output_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train ``config.arch`` on the ImageFolder ``data_dir``; write the best checkpoint and its record to ``output_dir``.

    With ``resume``, continue from ``output_dir/last.pt`` (same model; more epochs
    than it holds). ``on_epoch`` is called with each epoch's metrics (the CLI
    prints them). See the module docstring for data, schedule and outputs.
    """
    config.check()
    started = time.perf_counter()
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    _refuse_outputs_over_inputs(data_dir, config, output_dir)
    entry = get_entry(config.arch)
    labels = class_names(data_dir)
    model = create_for_training(config, config.arch, dict(config.options), len(labels))
    defaults = model_defaults(model)
    assert defaults is not None  # create_model attaches them
    preprocessing = Preprocessing.from_defaults(defaults)
    data = load_data(data_dir, config, preprocessing, defaults.input_size[0], progress)
    device = resolve_device(config.device)
    options = json_options(model)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    history: list[EpochMetrics] = []
    first_epoch = 1
    resume_path = output_dir / RESUME_NAME
    if resume:
        state = read_resume(resume_path, entry.name, options, config.epochs)
        load_weights(model, state["model"], str(resume_path))
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochMetrics(**metrics) for metrics in json.loads(state["history"])]
        first_epoch = int(state["epoch"]) + 1
    model.to(device)
    move_optimizer_state(optimizer, device)
    params = sum(p.numel() for p in model.parameters())
    logger.info("training %s (%d params) on %s from epoch %d", config.arch, params, device, first_epoch)
    output_dir.mkdir(parents=True, exist_ok=True)
    best_epoch = best_epoch_of(history) if history else 0
    with deterministic_cudnn(device):
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_started = time.perf_counter()
            loss, accuracy, lr, rate = train_epoch(model, optimizer, data, config, epoch, device, progress)
            val_loss, val_accuracy = evaluate(
                model, data.val_images, data.val_labels, config.batch_size, device
            )
            metrics = EpochMetrics(
                epoch, loss, accuracy, val_loss, val_accuracy, lr, time.perf_counter() - epoch_started, rate
            )
            history.append(metrics)
            if not best_epoch or best_epoch_of(history) == epoch:
                best_epoch = epoch
                save_checkpoint(model, output_dir / CHECKPOINT_NAME)
            save_resume(resume_path, model, optimizer, entry.name, options, epoch, history)
            write_record(output_dir, config, model, preprocessing, data, history, best_epoch)
            if on_epoch is not None:
                on_epoch(metrics)
    model.to("cpu")
    return TrainResult(
        arch=entry.name,
        options=options,
        input_size=defaults.input_size,
        labels=data.labels,
        checkpoint=output_dir / CHECKPOINT_NAME,
        record=output_dir / RECORD_NAME,
        curves=output_dir / CURVES_NAME,
        history=tuple(history),
        best_epoch=best_epoch,
        resumed_from=first_epoch - 1,
        params=params,
        train_images=len(data.train_images),
        val_images=len(data.val_images),
        device=str(device),
        seconds=time.perf_counter() - started,
    )


def _refuse_outputs_over_inputs(data_dir: Path, config: TrainConfig, output_dir: Path) -> None:
    """Before any work: the output folder is a folder outside the data, and no file written is an input.

    The files written are the checkpoint, its record and labels, the curves and
    the resume state (which ``resume`` reads back on purpose); the inputs are the
    initial weights with the record and labels beside them. An output folder in a
    data folder would add a class folder (or, at its top, a ``curves.png``) to
    the data the next run reads.
    """
    if output_dir.exists() and not output_dir.is_dir():
        what = special_file_reason(output_dir) or "a file"
        raise ConfigError(f"output {output_dir} is {what}, not a folder; give a folder", params=("output",))
    for what, folder in (("the training data folder", data_dir), ("the validation folder", config.val_dir)):
        if folder is not None and folder.is_dir():
            inside = Path(os.path.realpath(output_dir)).is_relative_to(os.path.realpath(folder))
            if inside:
                raise ConfigError(
                    f"output {output_dir} is inside {what} {folder}, whose images the run reads; "
                    "give output a folder outside it",
                    params=("output",),
                )
    weights = config.weights
    refuse_output_over_input(
        [("output", output_dir / name) for name in WRITTEN_NAMES],
        [
            ("the initial weights", weights),
            ("the initial weights' record", weights.with_name(RECORD_NAME) if weights else None),
            ("the initial weights' labels", weights.with_name(LABELS_NAME) if weights else None),
        ],
    )


def plain_twin_config(config: TrainConfig) -> TrainConfig:
    """The same settings for the model's plain twin (ResNet for SE-ResNet); SE-only options dropped."""
    defaults = get_entry(config.arch).defaults
    twin = defaults.plain_twin
    if twin is None:
        raise ConfigError(f"{config.arch} has no plain twin to compare with; choose an SE model")
    if config.weights is not None:
        raise ConfigError("compare_plain trains both from scratch; drop weights", params=("weights",))
    options = dict(defaults.plain_twin_options)
    options.update((key, value) for key, value in config.options.items() if key not in _SE_ONLY_OPTIONS)
    return dataclasses.replace(config, arch=twin, options=options)


def train_with_plain_twin(
    data_dir: str | os.PathLike[str],
    config: TrainConfig,
    output_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> tuple[TrainResult, TrainResult]:
    """Train ``config.arch`` into ``output_dir`` and its plain twin into ``output_dir/plain`` with the same settings."""
    twin_config = plain_twin_config(config)
    se_result = train(data_dir, config, output_dir, progress=progress, on_epoch=on_epoch)
    plain_result = train(
        data_dir, twin_config, Path(output_dir) / PLAIN_DIR_NAME, progress=progress, on_epoch=on_epoch
    )
    return se_result, plain_result


def plain_comparison_text(se_result: TrainResult, plain_result: TrainResult) -> str:
    """Both runs' final and best figures side by side: what the SE blocks bought on this data."""
    lines = [
        f"{'model':<24} {'params':>10} {'final val acc':>14} {'best val acc':>13} {'final val loss':>15}"
    ]
    for result in (se_result, plain_result):
        final = result.history[-1]
        lines.append(
            f"{result.arch:<24} {result.params:>10,} {100 * final.val_accuracy:>13.2f}% "
            f"{100 * result.best.val_accuracy:>12.2f}% {final.val_loss:>15.4f}"
        )
    return "\n".join(lines)
