"""The epoch loop of ``sedeploy train``: settings, data in memory, augmentation, schedule, one epoch, evaluation.

Shared by plain training (:mod:`sedeploy.train`) and quantization-aware fine-tuning
(:mod:`sedeploy.training.qat`): both run the same seeded, resumable loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sedeploy.artifacts.metadata import Preprocessing
from sedeploy.data import ImageSet, ImageSetError, list_images, load_image_set
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.progress import progress_bar
from sedeploy.training import DEVICES, SCHEDULES

logger = logging.getLogger(__name__)

WARMUP_SHARE = 0.05
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
class TrainData:
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device cuda was asked for but torch sees no CUDA GPU; use device cpu", params=("device",)
        )
    return torch.device(device)


@contextmanager
def deterministic_cudnn(device: torch.device) -> Any:
    """cuDNN's deterministic algorithms for the run on CUDA; the previous flags come back afterwards."""
    backend = torch.backends.cudnn
    saved = (backend.deterministic, backend.benchmark)
    if device.type == "cuda":
        backend.deterministic, backend.benchmark = True, False
    try:
        yield
    finally:
        backend.deterministic, backend.benchmark = saved


def class_names(folder: Path) -> tuple[str, ...]:
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


def load_split(folder: Path, preprocessing: Preprocessing, channels: int, progress: bool) -> ImageSet:
    try:
        image_set = load_image_set(folder, preprocessing, channels, progress=progress)
    except ImageSetError as error:
        raise TrainingError(str(error)) from None
    if image_set.report.skipped:
        logger.warning("%d unreadable images in %s left out", len(image_set.report.skipped), folder)
    return image_set


def load_data(
    data_dir: Path, config: TrainConfig, preprocessing: Preprocessing, channels: int, progress: bool
) -> TrainData:
    labels = class_names(data_dir)
    train_set = load_split(data_dir, preprocessing, channels, progress)
    assert train_set.labels is not None  # an ImageFolder always has labels
    images, targets = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)
    summary: dict[str, Any] = {
        "train_dir": str(data_dir),
        "train_dataset_sha256": train_set.report.dataset_sha256,
    }
    if config.val_dir is not None:
        val_labels = class_names(config.val_dir)
        if val_labels != labels:
            raise TrainingError(
                f"validation classes {list(val_labels)} differ from training classes {list(labels)}; "
                "give both folders the same class sub-folders"
            )
        val_set = load_split(config.val_dir, preprocessing, channels, progress)
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
    return TrainData(train_images, train_labels, val_images, val_targets, labels, summary)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate(
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


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle split into batches; a last batch of one image joins the one before (BatchNorm)."""
    batches = list(torch.randperm(count, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainData,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> tuple[float, float, float, float]:
    """One pass over the training images; returns loss, accuracy, last learning rate and images/s."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    batches = shuffled_batches(len(data.train_images), config.batch_size, generator)
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


def best_epoch_of(history: Sequence[EpochMetrics]) -> int:
    """Highest validation accuracy; among equals, the lowest validation loss; among those, the earliest."""
    best = max(history, key=lambda m: (m.val_accuracy, -m.val_loss, -m.epoch))
    return best.epoch


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)
