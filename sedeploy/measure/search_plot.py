"""The search as a picture: images/s against fidelity loss, every timed candidate labelled without overlap,
the Pareto front joined, the winner ringed, the budget drawn (``optimize --plot``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sedeploy.measure.search import SearchReport
from sedeploy.plots import new_figure, save_figure

LABEL_GAP = 0.034
"""Smallest vertical distance between two point labels, in axes fractions (6-point text on a 4.8-inch figure)."""


def _label_points(axes: Any, points: Sequence[tuple[str, float, float]]) -> None:
    """Label each (text, x, y) point to its right without two labels overlapping.

    Points within 45% of the axes' width of each other share a column of labels, right of its right-most point;
    in each column the
    labels keep their points' order from top to bottom and at least :data:`LABEL_GAP` apart, joined to a point
    by a thin line where they had to move.
    """
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    placed = [
        ((x - x0) / ((x1 - x0) or 1.0), (y - y0) / ((y1 - y0) or 1.0), text, x, y) for text, x, y in points
    ]
    columns: list[list[tuple[float, float, str, float, float]]] = []
    for point in sorted(placed):  # left to right: a new column where the points are far apart
        if not columns or point[0] - columns[-1][0][0] > 0.45:
            columns.append([])
        columns[-1].append(point)
    for column in columns:
        label_x = max(point[0] for point in column) + 0.02  # right of the column's right-most point
        column.sort(key=lambda point: -point[1])
        heights: list[float] = []
        for _, fy, *_ in column:
            heights.append(min(fy, heights[-1] - LABEL_GAP) if heights else min(fy, 0.97))
        shift = max(0.0, 0.03 - heights[-1])
        for (fx, fy, text, x, y), height in zip(column, heights, strict=True):
            moved = abs(height + shift - fy) > 0.01 or label_x - fx > 0.03
            axes.annotate(
                text,
                (x, y),
                xytext=(label_x, height + shift),
                textcoords="axes fraction",
                fontsize=6,
                va="center",
                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if moved else None,
            )


def plot_search(report: SearchReport, path: Path, model: str | None = None) -> Path:
    """PNG of images/s against fidelity loss, every timed candidate, the Pareto front joined and the winner ringed.

    Labels are placed so that no two overlap (candidates of one backend often sit at the same loss and near the
    same speed); the title names the model, the machine and its ISA.
    """
    figure, axes = new_figure((7.5, 4.8))
    batch = max(report.batches)
    points = [
        (row, row.images_per_s[batch])
        for row in report.rows
        if row.fidelity is not None and row.images_per_s.get(batch)
    ]
    labelled = any(row.fidelity.drop_points is not None for row, _ in points)  # type: ignore[union-attr]

    def loss(row: Any) -> float:
        drop = row.fidelity.drop_points
        return drop if labelled and drop is not None else 100 * (1 - row.fidelity.top1_agreement)

    for row, rate in points:
        within = row.status in ("chosen", "meets budget", "baseline")
        axes.scatter(
            loss(row), rate, marker="o" if within else "x", color="tab:blue" if within else "tab:gray"
        )
    front = sorted((loss(row), rate) for row, rate in points if row.pareto)
    if front:
        axes.plot([x for x, _ in front], [y for _, y in front], color="tab:orange", label="Pareto front")
    winner = report.winner
    if winner is not None and winner.images_per_s.get(batch):
        axes.scatter(
            loss(winner),
            winner.images_per_s[batch],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            label="chosen",
        )
    if labelled and report.budget.max_drop is not None:
        axes.axvline(report.budget.max_drop, color="tab:red", linestyle=":", label="budget")
    axes.set_xlabel(
        "top-1 accuracy drop (percentage points)" if labelled else "top-1 changes vs fp32 (% of images)"
    )
    axes.set_ylabel(f"images / s at batch {batch}")
    axes.margins(x=0.3, y=0.08)  # room right of the points for their labels
    axes.autoscale_view()
    _label_points(axes, [(row.label, loss(row), rate) for row, rate in points])  # last: the limits are final
    machine = report.machine
    title = f"sedeploy optimize {model + ' ' if model else ''}- {machine.get('cpu', '')}"
    if machine.get("isa"):
        title += f"\n{machine['isa']}"
    return save_figure(figure, axes, title, path, legend_size=7)
