"""Figures: one setup and save for every PNG sedeploy writes (bench, optimize, train, verify)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sedeploy.files import atomic_output
from sedeploy.optional import import_optional


def new_figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib Figure with its own Agg canvas (no pyplot: the user's backend is left alone) and its axes."""
    import_optional("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def save_figure(figure: Any, axes: Any, title: str, path: Path, legend_size: int = 8) -> Path:
    """Grid, legend and title on ``axes``, then ``figure`` written to ``path`` as PNG, atomically."""
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=legend_size)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_output(path) as temp_path:
        figure.savefig(temp_path, format="png")
    return path
