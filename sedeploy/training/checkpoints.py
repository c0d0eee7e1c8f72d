"""What a training run keeps: the model it starts from, the resume state, the record and labels beside the best checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.errors import BadInputError, MissingDependencyError
from sedeploy.files import atomic_output, open_regular, special_file_reason, write_json_atomic
from sedeploy.models.checkpoint import convert_layout, load_weights, merge_options, read_checkpoint
from sedeploy.models.record import LABELS_NAME, RECORD_FORMAT, RECORD_NAME, RECORD_VERSION
from sedeploy.models.registry import create_model, get_entry, model_defaults
from sedeploy.training.curves import plot_curves
from sedeploy.training.loop import EpochMetrics, TrainConfig, TrainData, TrainingError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.safetensors"
CURVES_NAME = "curves.png"
RESUME_NAME = "last.pt"
WRITTEN_NAMES = (CHECKPOINT_NAME, RECORD_NAME, LABELS_NAME, CURVES_NAME, RESUME_NAME)
"""Every file a run writes into its output folder."""


def classifier_name(model: nn.Module) -> str | None:
    """Name of the model's last Linear layer (its classifier), if any."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def first_conv_name(model: nn.Module) -> str | None:
    return next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)), None)


def initial_state(model: nn.Module, weights: Path) -> None:
    """Tensors of ``weights`` fitted to ``model``: new classifier for another class count, conv1 summed to 1 channel."""
    checkpoint = convert_layout(read_checkpoint(weights))
    state = dict(checkpoint.state_dict)
    expected = model.state_dict()
    head, stem = classifier_name(model), first_conv_name(model)
    for key, value in list(state.items()):
        target = expected.get(key)
        if target is None or target.shape == value.shape:
            continue
        if head is not None and key.startswith(f"{head}."):
            logger.info("classifier %s %s re-initialised for %s", key, list(value.shape), list(target.shape))
            state[key] = target
        elif stem is not None and key == f"{stem}.weight" and target.shape[1] == 1 and value.ndim == 4:
            state[key] = value.sum(dim=1, keepdim=True)
    for key in expected:
        if head is not None and key.startswith(f"{head}.") and key not in state:
            state[key] = expected[key]
    load_weights(model, state, f"{weights} ({checkpoint.layout} layout)")


def create_for_training(
    config: TrainConfig, arch: str, options: dict[str, Any], num_classes: int
) -> nn.Module:
    """The model to train, seeded, with ``config.weights`` loaded when given."""
    entry = get_entry(arch)
    in_chans = config.in_chans or entry.defaults.input_size[0]
    full = {**options, "in_chans": in_chans, "num_classes": num_classes}
    if config.weights is not None:
        implied = convert_layout(read_checkpoint(config.weights)).implied_options
        implied = {k: v for k, v in implied.items() if k not in ("in_chans", "num_classes")}
        full = merge_options(implied, full, str(config.weights))
    torch.manual_seed(config.seed)
    model = create_model(arch, img_size=config.img_size, **full)
    if config.weights is not None:
        initial_state(model, config.weights)
    return model


def read_resume(path: Path, arch: str, options: dict[str, Any], epochs: int) -> dict[str, Any]:
    if not path.is_file() and special_file_reason(path) is None:
        raise TrainingError(
            f"nothing to resume: {path} does not exist; train without resume first", params=("resume",)
        )
    try:
        with open_regular(path, "training state") as handle:  # a pipe or a device: refused, not waited on
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except BadInputError:
        raise
    except Exception as error:
        raise TrainingError(
            f"{path} is not a readable training state ({error}); train without resume"
        ) from None
    if state.get("arch") != arch or json.loads(state.get("options", "{}")) != options:
        raise TrainingError(
            f"{path} was trained as {state.get('arch')} {state.get('options')}, not {arch} "
            f"{json.dumps(options, sort_keys=True)}; use the same model or another output folder"
        )
    if int(state["epoch"]) >= epochs:
        raise TrainingError(
            f"{path} already holds {state['epoch']} epoch(s); ask for more than {state['epoch']} epochs to continue"
        )
    return dict(state)


def json_options(model: nn.Module) -> dict[str, Any]:
    """The model's options as JSON gives them back (tuples become lists), for comparing with a saved run."""
    return dict(json.loads(json.dumps(vars(model)["model_options"], sort_keys=True)))


def save_resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    arch: str,
    options: dict[str, Any],
    epoch: int,
    history: Sequence[EpochMetrics],
) -> None:
    state = {
        "arch": arch,
        "options": json.dumps(options, sort_keys=True),
        "epoch": epoch,
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "history": json.dumps([dataclasses.asdict(metrics) for metrics in history]),
    }
    with atomic_output(path) as temp_path:
        torch.save(state, temp_path)


def write_record(
    output_dir: Path,
    config: TrainConfig,
    model: nn.Module,
    preprocessing: Preprocessing,
    data: TrainData,
    history: Sequence[EpochMetrics],
    best_epoch: int,
) -> None:
    """Write model.json, labels.txt and curves.png for the run so far."""
    from sedeploy._version import __version__

    defaults = model_defaults(model)
    assert defaults is not None
    _, height, width = defaults.input_size
    labels_path = output_dir / LABELS_NAME
    with atomic_output(labels_path) as temp_path:
        temp_path.write_text("".join(f"{label}\n" for label in data.labels), encoding="utf-8")
    record = {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "arch": vars(model)["model_name"],
        "options": json_options(model),
        "input_size": list(defaults.input_size),
        "labels": list(data.labels),
        "preprocessing": dataclasses.asdict(preprocessing),
        "checkpoint": CHECKPOINT_NAME,
        "best_epoch": best_epoch,
        "best": dataclasses.asdict(history[best_epoch - 1]),
        "history": [dataclasses.asdict(metrics) for metrics in history],
        "config": config.to_dict(),
        "data": {**data.summary, "train_images": len(data.train_images), "val_images": len(data.val_images)},
        "export_command": (
            f"sedeploy export {vars(model)['model_name']} --weights {CHECKPOINT_NAME} "
            f"--img-size {height}x{width} --labels {LABELS_NAME}"
        ),
        "sedeploy_version": __version__,
        "torch_version": torch.__version__,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(output_dir / RECORD_NAME, record)
    try:
        plot_curves(history, output_dir / CURVES_NAME, title=f"{record['arch']} (best epoch {best_epoch})")
    except MissingDependencyError as error:  # the curves are a picture of model.json, which has the figures
        logger.warning("no %s: %s", CURVES_NAME, error)
