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
import math
import os
import shlex
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.data import ImageSet, ImageSetError, list_images, load_image_set
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError
from sedeploy.files import (
    atomic_output,
    open_regular,
    refuse_output_over_input,
    special_file_reason,
    write_json_atomic,
)
from sedeploy.models.checkpoint import (
    convert_layout,
    load_weights,
    merge_options,
    read_checkpoint,
    save_checkpoint,
)
from sedeploy.models.record import LABELS_NAME, RECORD_FORMAT, RECORD_NAME, RECORD_VERSION
from sedeploy.models.registry import create_model, get_entry, model_defaults
from sedeploy.models.senet import RESNET_SE_OPTION_NAMES
from sedeploy.optional import import_optional
from sedeploy.progress import progress_bar

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "onecycle")
"""Learning-rate schedules: ``cosine`` (linear warm-up, then cosine decay to 0) or ``onecycle``."""
DEVICES = ("auto", "cpu", "cuda")
"""``auto`` is CUDA when torch sees a GPU, else the CPU."""
CHECKPOINT_NAME = "model.safetensors"
CURVES_NAME = "curves.png"
RESUME_NAME = "last.pt"
_WRITTEN_NAMES = (CHECKPOINT_NAME, RECORD_NAME, LABELS_NAME, CURVES_NAME, RESUME_NAME)
"""Every file a run writes into its output folder."""
PLAIN_DIR_NAME = "plain"
WARMUP_SHARE = 0.05
_SE_ONLY_OPTIONS = RESNET_SE_OPTION_NAMES
_MAX_SHIFT, _MAX_ROTATION_DEG, _SCALE_RANGE = 0.1, 10.0, (0.9, 1.1)


class TrainingError(BadInputError):
    """The data or a saved run cannot be used for training (one class, no images, a mismatched resume)."""


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; everything that decides the resulting weights except the data.

    ``options`` are the model's own options (``in_chans`` and ``num_classes`` are
    set from ``in_chans`` and the data). ``weights`` initialises the model from a
    checkpoint in any layout :mod:`sedeploy.models.checkpoint` reads (fine-tuning): a
    classifier of another class count is re-initialised and an RGB first
    convolution is summed into one channel for ``in_chans=1``.
    """

    arch: str
    img_size: tuple[int, int] | None = None
    in_chans: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    val_split: float = 0.2
    val_dir: Path | None = None
    weights: Path | None = None
    seed: int = 0
    hflip: bool = False
    augment: bool = True
    device: str = "auto"

    def check(self) -> None:
        """Fail with :class:`ConfigError` on settings that cannot train."""
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(
                f"batch size must be at least 2 (BatchNorm needs two images), got {self.batch_size}"
            )
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(
                f"lr must be positive and weight decay non-negative, got {self.lr}, {self.weight_decay}"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if self.val_dir is None and not 0 < self.val_split < 1:
            raise ConfigError(f"val_split must be between 0 and 1 (exclusive), got {self.val_split}")
        for name in ("in_chans", "num_classes", "img_size"):
            if name in self.options:
                raise ConfigError(f"give {name} as its own setting, not among the model options")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        data = dataclasses.asdict(self)
        for key in ("val_dir", "weights"):
            data[key] = str(data[key]) if data[key] is not None else None
        data["img_size"] = list(self.img_size) if self.img_size is not None else None
        return data


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's figures; accuracies are fractions in [0, 1]."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_second: float


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
        names = _WRITTEN_NAMES
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


@dataclass(frozen=True)
class _Data:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    labels: tuple[str, ...]
    summary: dict[str, Any]


def learning_rate(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """The learning rate at ``step`` (0-based) of ``total_steps``: a pure function, so resuming needs no state.

    ``cosine``: linear warm-up over the first 5% of steps, then cosine decay to 0.
    ``onecycle``: torch's ``OneCycleLR`` shape: cosine rise from ``base/25`` to
    ``base`` over 30% of steps, cosine fall to ``base/1e4``.
    """
    progress = step / max(1, total_steps)
    if schedule == "cosine":
        warmup = WARMUP_SHARE
        if progress < warmup:
            return base_lr * (step + 1) / max(1.0, warmup * total_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))
    if schedule == "onecycle":
        rise, start, end = 0.3, base_lr / 25.0, base_lr / 25.0 / 1e4

        def anneal(low: float, high: float, fraction: float) -> float:
            return high + (low - high) * 0.5 * (1.0 + math.cos(math.pi * fraction))

        if progress < rise:
            return anneal(start, base_lr, progress / rise)
        return anneal(base_lr, end, (progress - rise) / (1.0 - rise))
    raise ConfigError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


def augment_batch(images: torch.Tensor, generator: torch.Generator, hflip: bool = False) -> torch.Tensor:
    """A random affine per image (scale, rotation, shift; border pixels repeated), and flips when ``hflip``."""
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    scale = uniform(*_SCALE_RANGE)
    angle = uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG) * (math.pi / 180.0)
    shift_x, shift_y = uniform(-2 * _MAX_SHIFT, 2 * _MAX_SHIFT), uniform(-2 * _MAX_SHIFT, 2 * _MAX_SHIFT)
    flip = (
        torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(count)
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device cuda was asked for but torch sees no CUDA GPU; use device cpu", params=("device",)
        )
    return torch.device(device)


@contextmanager
def _deterministic_cudnn(device: torch.device) -> Any:
    """cuDNN's deterministic algorithms for the run on CUDA; the previous flags come back afterwards."""
    backend = torch.backends.cudnn
    saved = (backend.deterministic, backend.benchmark)
    if device.type == "cuda":
        backend.deterministic, backend.benchmark = True, False
    try:
        yield
    finally:
        backend.deterministic, backend.benchmark = saved


def _class_names(folder: Path) -> tuple[str, ...]:
    """The class names of an ImageFolder, or :class:`TrainingError` when it is not one with two classes."""
    entries, class_names = list_images(folder)
    if class_names is None:
        detail = f"{len(entries)} images sit directly in it" if entries else "it has no class sub-folders"
        raise TrainingError(
            f"{folder} is not an ImageFolder ({detail}); put each class's images in its own sub-folder"
        )
    if len(class_names) < 2:
        raise TrainingError(
            f"{folder} has only one class folder ({class_names[0]!r}); training needs at least two classes, "
            "one sub-folder each"
        )
    return class_names


def _load_split(folder: Path, preprocessing: Preprocessing, channels: int, progress: bool) -> ImageSet:
    try:
        image_set = load_image_set(folder, preprocessing, channels, progress=progress)
    except ImageSetError as error:
        raise TrainingError(str(error)) from None
    if image_set.report.skipped:
        logger.warning("%d unreadable images in %s left out", len(image_set.report.skipped), folder)
    return image_set


def _load_data(
    data_dir: Path, config: TrainConfig, preprocessing: Preprocessing, channels: int, progress: bool
) -> _Data:
    labels = _class_names(data_dir)
    train_set = _load_split(data_dir, preprocessing, channels, progress)
    assert train_set.labels is not None  # an ImageFolder always has labels
    images, targets = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    summary: dict[str, Any] = {
        "train_dir": str(data_dir),
        "train_dataset_sha256": train_set.report.dataset_sha256,
    }
    if config.val_dir is not None:
        val_labels = _class_names(config.val_dir)
        if val_labels != labels:
            raise TrainingError(
                f"validation classes {list(val_labels)} differ from training classes {list(labels)}; "
                "give both folders the same class sub-folders"
            )
        val_set = _load_split(config.val_dir, preprocessing, channels, progress)
        assert val_set.labels is not None
        train_images, train_labels = images, targets
        val_images, val_targets = torch.from_numpy(val_set.images), torch.from_numpy(val_set.labels)
        summary.update(val_dir=str(config.val_dir), val_dataset_sha256=val_set.report.dataset_sha256)
    else:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
        val_count = max(1, round(len(images) * config.val_split))
        if val_count >= len(images):
            raise TrainingError(
                f"{data_dir} holds {len(images)} usable image(s): too few to keep {val_count} for validation; "
                "add images or give val_dir"
            )
        val_index, train_index = order[:val_count], order[val_count:]
        train_images, train_labels = images[train_index], targets[train_index]
        val_images, val_targets = images[val_index], targets[val_index]
        summary.update(val_split=config.val_split, val_files=sorted(train_set.files[i] for i in val_index))
    if len(train_images) < 2:
        raise TrainingError(f"{data_dir} has {len(train_images)} training image(s); add images (2 at least)")
    return _Data(train_images, train_labels, val_images, val_targets, labels, summary)


def _classifier(model: nn.Module) -> str | None:
    """Name of the model's last Linear layer (its classifier), if any."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def _first_conv(model: nn.Module) -> str | None:
    return next((name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)), None)


def _initial_state(model: nn.Module, weights: Path) -> None:
    """Tensors of ``weights`` fitted to ``model``: new classifier for another class count, conv1 summed to 1 channel."""
    checkpoint = convert_layout(read_checkpoint(weights))
    state = dict(checkpoint.state_dict)
    expected = model.state_dict()
    head, stem = _classifier(model), _first_conv(model)
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


def _create(config: TrainConfig, arch: str, options: dict[str, Any], num_classes: int) -> nn.Module:
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
        _initial_state(model, config.weights)
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            target = labels[start : start + batch_size].to(device)
            logits = model(batch)
            total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    return total_loss / len(images), correct / len(images)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle split into batches; a last batch of one image joins the one before (BatchNorm)."""
    batches = list(torch.randperm(count, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: _Data,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> tuple[float, float, float, float]:
    """One pass over the training images; returns loss, accuracy, last learning rate and images/s."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    batches = _batches(len(data.train_images), config.batch_size, generator)
    total_steps = config.epochs * len(batches)
    model.train()
    seen, correct, loss_sum, lr = 0, 0, 0.0, config.lr
    started = time.perf_counter()
    with progress_bar(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", enabled=progress) as bar:
        for index, batch_index in enumerate(bar):
            lr = learning_rate((epoch - 1) * len(batches) + index, total_steps, config.lr, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = data.train_images[batch_index]
            if config.augment:
                images = augment_batch(images, generator, config.hflip)
            images, target = images.to(device), data.train_labels[batch_index].to(device)
            logits = model(images)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(batch_index)
            loss_sum += loss.item() * len(batch_index)
            correct += int((logits.argmax(1) == target).sum())
            rate = seen / max(1e-9, time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.0f}", refresh=False)
    return loss_sum / seen, correct / seen, lr, seen / max(1e-9, time.perf_counter() - started)


def _read_resume(path: Path, arch: str, options: dict[str, Any], epochs: int) -> dict[str, Any]:
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


def _json_options(model: nn.Module) -> dict[str, Any]:
    """The model's options as JSON gives them back (tuples become lists), for comparing with a saved run."""
    return dict(json.loads(json.dumps(vars(model)["model_options"], sort_keys=True)))


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
    labels = _class_names(data_dir)
    model = _create(config, config.arch, dict(config.options), len(labels))
    defaults = model_defaults(model)
    assert defaults is not None  # create_model attaches them
    preprocessing = Preprocessing.from_defaults(defaults)
    data = _load_data(data_dir, config, preprocessing, defaults.input_size[0], progress)
    device = _resolve_device(config.device)
    options = _json_options(model)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    history: list[EpochMetrics] = []
    first_epoch = 1
    resume_path = output_dir / RESUME_NAME
    if resume:
        state = _read_resume(resume_path, entry.name, options, config.epochs)
        load_weights(model, state["model"], str(resume_path))
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochMetrics(**metrics) for metrics in json.loads(state["history"])]
        first_epoch = int(state["epoch"]) + 1
    model.to(device)
    _move_optimizer_state(optimizer, device)
    params = sum(p.numel() for p in model.parameters())
    logger.info("training %s (%d params) on %s from epoch %d", config.arch, params, device, first_epoch)
    output_dir.mkdir(parents=True, exist_ok=True)
    best_epoch = _best_epoch(history) if history else 0
    with _deterministic_cudnn(device):
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_started = time.perf_counter()
            loss, accuracy, lr, rate = _train_epoch(model, optimizer, data, config, epoch, device, progress)
            val_loss, val_accuracy = _evaluate(
                model, data.val_images, data.val_labels, config.batch_size, device
            )
            metrics = EpochMetrics(
                epoch, loss, accuracy, val_loss, val_accuracy, lr, time.perf_counter() - epoch_started, rate
            )
            history.append(metrics)
            if not best_epoch or _best_epoch(history) == epoch:
                best_epoch = epoch
                save_checkpoint(model, output_dir / CHECKPOINT_NAME)
            _save_resume(resume_path, model, optimizer, entry.name, options, epoch, history)
            _write_record(output_dir, config, model, preprocessing, data, history, best_epoch)
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
        [("output", output_dir / name) for name in _WRITTEN_NAMES],
        [
            ("the initial weights", weights),
            ("the initial weights' record", weights.with_name(RECORD_NAME) if weights else None),
            ("the initial weights' labels", weights.with_name(LABELS_NAME) if weights else None),
        ],
    )


def _best_epoch(history: Sequence[EpochMetrics]) -> int:
    """Highest validation accuracy; among equals, the lowest validation loss; among those, the earliest."""
    best = max(history, key=lambda m: (m.val_accuracy, -m.val_loss, -m.epoch))
    return best.epoch


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def _save_resume(
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


def _write_record(
    output_dir: Path,
    config: TrainConfig,
    model: nn.Module,
    preprocessing: Preprocessing,
    data: _Data,
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
        "options": _json_options(model),
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


def plot_curves(history: Sequence[EpochMetrics], path: str | os.PathLike[str], title: str = "") -> Path:
    """Draw loss and accuracy per epoch (training and validation) into a PNG with matplotlib, as bench does.

    Needs the ``plot`` extra (:class:`~sedeploy.errors.MissingDependencyError` without it).
    """
    import_optional("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas: no pyplot, so the user's matplotlib backend is left alone.
    figure = Figure(figsize=(8, 3.2), dpi=110)
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = [metrics.epoch for metrics in history]
    for split, loss, accuracy in (
        ("train", [m.train_loss for m in history], [100 * m.train_accuracy for m in history]),
        ("val", [m.val_loss for m in history], [100 * m.val_accuracy for m in history]),
    ):
        loss_axes.plot(epochs, loss, marker="o", markersize=3, label=split)
        accuracy_axes.plot(epochs, accuracy, marker="o", markersize=3, label=split)
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy %")):
        axes.set_xlabel("epoch")
        axes.set_title(name, fontsize=9)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path) as temp_path:
        figure.savefig(temp_path, format="png")
    return path


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
