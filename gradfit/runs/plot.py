"""Training curves of one or more runs, drawn with matplotlib (the ``plot`` extra) as a PNG, SVG or PDF file.

Only matplotlib's object API is used (a ``Figure`` on its own Agg canvas, never pyplot), so drawing a plot from a
library call or a test touches no global state. matplotlib is imported inside ``plot_curves``: importing this
module, and the CLI's ``--help``, stay cheap. No jax.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradfit import files
from gradfit.errors import GradfitError

PLOT_METRICS_DEFAULT = ("batch_objective", "val_loss", "val_accuracy")  # batch_objective: at every log point
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
MIN_SIZE, MAX_SIZE = (200, 150), (10000, 10000)  # pixels (width, height)
DPI = 100  # with figsize = size / DPI, a PNG has exactly ``size`` pixels
LINE_WIDTH = 1.8
NOT_METRICS = frozenset({"step", "epoch", "elapsed_s"})  # the x axis and bookkeeping, not curves

Records = Sequence[Mapping[str, Any]]
Points = tuple[list[float], list[float]]


def plot_curves(
    curves: Sequence[tuple[str, Records]],
    metrics: Sequence[str],
    out: Path,
    log_y: bool = False,
    size: tuple[int, int] = (1200, 400),
) -> None:
    """Draw one panel per metric, side by side, with one line per run, and write it to ``out``.

    Args:
        curves: (label, records) per run; records are the dicts of its metrics.jsonl, each with ``step`` and
            metric values (None or missing where not computed at that step: such points are skipped).
        metrics: the metrics to draw, one panel each, e.g. ``PLOT_METRICS_DEFAULT``.
        out: the file to write; its suffix (.png, .svg, .pdf) chooses the format. Replaced atomically.
        log_y: put the y axis of every panel but the accuracies' (fractions in [0, 1]) on a log scale.
        size: (width, height) in pixels, from 200x150 to 10000x10000; a PNG has exactly this size.

    Raises:
        GradfitError: an unknown suffix or size out of range; a metric no run has a value for; a value <= 0 with
            ``log_y``; matplotlib is not installed. Nothing is written then.
    """
    out = Path(out)
    image_format = _format(out)
    _check_size(size)
    metrics = list(dict.fromkeys(metrics))  # a metric asked for twice is drawn once
    if not curves or not metrics:
        raise GradfitError("nothing to plot: give at least one run and one metric")
    # points[run][panel] = (steps, values): read once, used by the checks and the drawing
    points = [[_points(records, metric) for metric in metrics] for _, records in curves]
    for panel, metric in enumerate(metrics):
        if not any(run[panel][0] for run in points):
            have = ", ".join(_available(records for _, records in curves)) or "none"
            raise GradfitError(f"no run has {metric} values; they have: {have}; pick with --metric")
    if log_y:
        _check_positive(curves, metrics, points)
    data = _render([label for label, _ in curves], metrics, points, image_format, log_y, size)
    files.write_atomic(out, data)


def _format(out: Path) -> str:
    image_format = FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise GradfitError(
            f"{out}: cannot tell the image format from the suffix {out.suffix or '(none)'!r}; "
            f"name the file with one of {', '.join(FORMATS)}"
        )
    return image_format


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if not (MIN_SIZE[0] <= width <= MAX_SIZE[0] and MIN_SIZE[1] <= height <= MAX_SIZE[1]):
        raise GradfitError(
            f"plot size {width}x{height} pixels is out of range; choose a width and height from "
            f"{MIN_SIZE[0]}x{MIN_SIZE[1]} to {MAX_SIZE[0]}x{MAX_SIZE[1]}"
        )


def _value(value: Any) -> float | None:
    """``value`` as a float if it can be drawn (a finite number), else None. NaN and inf (a diverged run) are
    skipped rather than drawn: one of them would stretch or break the axis for every other run."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _points(records: Records, metric: str) -> Points:
    """(steps, values) of ``metric`` in a run's records, where both the step and the value can be drawn."""
    pairs = [(_value(r.get("step")), _value(r.get(metric))) for r in records]
    kept = [(step, value) for step, value in pairs if step is not None and value is not None]
    return [step for step, _ in kept], [value for _, value in kept]


def _available(runs) -> list[str]:
    """The metrics (sorted) with at least one value in some run's records, for an error message."""
    return sorted(
        {
            key
            for records in runs
            for r in records
            for key, value in r.items()
            if key not in NOT_METRICS and _value(value) is not None
        }
    )


def _log_scaled(metric: str) -> bool:
    """Losses, objectives and norms span decades; accuracies are fractions, clearer on a linear axis."""
    return "accuracy" not in metric


def _check_positive(curves, metrics: Sequence[str], points) -> None:
    for (label, _), run in zip(curves, points):
        for metric, (steps, values) in zip(metrics, run):
            if not _log_scaled(metric):
                continue
            bad = next((i for i, v in enumerate(values) if v <= 0), None)
            if bad is not None:
                raise GradfitError(
                    f"{metric} of run {label!r} is {values[bad]:g} at step {steps[bad]:g}, which a log "
                    "scale cannot show; drop --log-y"
                )


def _render(
    labels: Sequence[str], metrics: Sequence[str], points, image_format: str, log_y: bool, size: tuple[int, int]
) -> bytes:
    """The figure's bytes in ``image_format``."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise GradfitError("gradfit plot needs matplotlib: pip install 'gradfit[plot]'") from None

    palette = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]  # tab10 is a ListedColormap: ten well-separated colours
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    handles: dict[
        int, Any
    ] = {}  # run index -> its first line: the legend lists runs even if they lack the first panel's metric
    for panel, (ax, metric) in enumerate(zip(axes, metrics)):
        for run, label in enumerate(labels):
            steps, values = points[run][panel]
            if steps:
                # a run with a single point would draw nothing as a line: give it a marker
                (line,) = ax.plot(
                    steps,
                    values,
                    color=palette[run % len(palette)],
                    linewidth=LINE_WIDTH,
                    marker="o" if len(steps) == 1 else None,
                    label=label,
                )
                handles.setdefault(run, line)
        ax.set_title(metric)
        ax.set_xlabel("step")
        if log_y and _log_scaled(metric):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(handles=[handles[run] for run in sorted(handles)], fontsize="small")
    buffer = io.BytesIO()
    # the figure's own box, not the user's rc savefig.bbox: "tight" there would change the size in pixels
    figure.savefig(buffer, format=image_format, dpi=DPI, bbox_inches=figure.bbox_inches, facecolor="white")
    return buffer.getvalue()
