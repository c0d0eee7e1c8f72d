"""The training curves: loss and accuracy per epoch as a PNG (the ``plot`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sedeploy.files import atomic_output
from sedeploy.optional import import_optional

if TYPE_CHECKING:
    from sedeploy.training.loop import EpochMetrics


def plot_curves(
    history: Sequence[EpochMetrics],
    path: str | os.PathLike[str],
    title: str = "",
    start: tuple[str, float, float] | None = None,
) -> Path:
    """Draw loss and accuracy per epoch (training and validation) into a PNG with matplotlib, as bench does.

    ``start``: a labelled validation point at epoch 0, ``(label, loss, accuracy)`` (QAT's post-training start, the
    one each epoch must beat). Needs the ``plot`` extra (:class:`~sedeploy.errors.MissingDependencyError` without it).
    """
    import_optional("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

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
    if start is not None:
        label, start_loss, start_accuracy = start
        loss_axes.plot([0], [start_loss], marker="s", linestyle="", color="black", label=label)
        accuracy_axes.plot([0], [100 * start_accuracy], marker="s", linestyle="", color="black", label=label)
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy %")):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
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
