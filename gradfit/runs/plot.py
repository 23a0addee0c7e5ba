"""Training curves of one or more runs, drawn with matplotlib (the ``plot`` extra) as a PNG, SVG or PDF file.

Only matplotlib's object API is used (a ``Figure`` on its own Agg canvas, never pyplot), so drawing a plot from a
library call or a test touches no global state. matplotlib is imported inside ``plot_curves``: importing this
module, and the CLI's ``--help``, stay cheap. No jax.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradfit import files
from gradfit.errors import GradfitError

PLOT_METRICS_DEFAULT = ("batch_objective", "val_loss", "val_accuracy")  # batch_objective: at every log point
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
MIN_SIZE, MAX_SIZE = (200, 150), (10000, 10000)  # pixels (width, height)
DPI = 100  # with figsize = size / DPI, a PNG has exactly ``size`` pixels
LINE_WIDTH = 1.8
# a line's colour (tab10's ten) and, from the eleventh run on, its dash: 40 runs (a sweep's members) stay apart
LINE_STYLES = ("-", "--", ":", "-.")
NOT_METRICS = frozenset({"step", "epoch", "elapsed_s"})  # the x axis and bookkeeping, not curves
# points drawn per run and panel at most (2,000 buckets' lowest and highest), above the 1,200 columns of the default
# image: a longer curve is reduced as it is read (``Curve``), so memory does not grow with metrics.jsonl
MAX_CURVE_POINTS = 4000
MAX_LISTED_KEYS = 1000  # metrics a "no run has ..." message lists at most (a file edited by hand may have more)


def plot_curves(
    curves: Sequence[tuple[str, Iterable[Mapping[str, Any]]]],
    metrics: Sequence[str],
    out: Path,
    log_y: bool = False,
    size: tuple[int, int] = (1200, 400),
) -> None:
    """Draw one panel per metric, side by side, with one line per run, and write it to ``out``.

    Args:
        curves: (label, records) per run; records are the dicts of its metrics.jsonl, each with ``step`` and
            metric values (None or missing where not computed at that step: such points are skipped). They are
            read once, one at a time (a generator such as ``RunDir.iter_metrics()`` does), and a curve longer
            than ``MAX_CURVE_POINTS`` is reduced as it is read (see ``Curve``): memory does not grow with them.
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
    runs, available = [], set()  # runs[run][panel]: a Curve; available: the metrics with a value somewhere
    for _, records in curves:
        run, has = _read(records, metrics)
        runs.append(run)
        available |= has
    for panel, metric in enumerate(metrics):
        if not any(run[panel].count for run in runs):
            have = ", ".join(sorted(available)) or "none"
            raise GradfitError(f"no run has {metric} values; they have: {have}; pick with --metric")
    if log_y:
        _check_positive([label for label, _ in curves], metrics, runs)
    points = [[curve.points() for curve in run] for run in runs]
    data = _render([label for label, _ in curves], metrics, points, image_format, log_y, size)
    files.write_atomic(out, data)


class Curve:
    """The (step, value) points of one metric of one run, reduced as they arrive to at most ``limit``.

    A curve of at most ``limit`` points is kept whole. A longer one is cut into equal runs of consecutive points
    (buckets, their width doubled whenever they grow too many) and keeps the lowest and the highest point of
    each, and its first and last points: the envelope of the curve, so a spike or a divergence still shows and
    the line ends where the run ended. Memory: ``limit`` points, whatever the curve's length.
    """

    def __init__(self, limit: int = MAX_CURVE_POINTS):
        self.limit = max(limit, 4)
        self.count = 0  # points added
        self.first_nonpositive: tuple[float, float] | None = None  # (step, value): what a log scale cannot show
        self._width = 1  # points per bucket
        self._buckets: list[list] = []  # [bucket number, lowest point, highest point]; a point: (index, step, value)
        self._first: tuple[int, float, float] | None = None
        self._last: tuple[int, float, float] | None = None

    def add(self, step: float, value: float) -> None:
        point = (self.count, step, value)
        self.count += 1
        self._first = self._first or point
        self._last = point
        if value <= 0 and self.first_nonpositive is None:
            self.first_nonpositive = (step, value)
        while True:
            number = point[0] // self._width
            if self._buckets and self._buckets[-1][0] == number:
                _widen(self._buckets[-1], point)
                return
            if len(self._buckets) < self._capacity():
                self._buckets.append([number, point, point])
                return
            self._merge()

    def points(self) -> tuple[list[float], list[float]]:
        """(steps, values) in the order they were added."""
        kept = {point for bucket in self._buckets for point in bucket[1:]}
        kept.update(point for point in (self._first, self._last) if point is not None)
        ordered = sorted(kept)  # by index: each point's is its own
        return [step for _, step, _ in ordered], [value for _, _, value in ordered]

    def _capacity(self) -> int:
        """Buckets allowed: each shows one point while they hold one, then two, with the first and the last."""
        return self.limit if self._width == 1 else (self.limit - 2) // 2

    def _merge(self) -> None:
        merged: list[list] = []
        for number, low, high in self._buckets:
            if merged and merged[-1][0] == number // 2:
                _widen(merged[-1], low)
                _widen(merged[-1], high)
            else:
                merged.append([number // 2, low, high])
        self._buckets, self._width = merged, self._width * 2


def _widen(bucket: list, point: tuple[int, float, float]) -> None:
    """Let ``bucket`` cover ``point``: keep its lowest and highest values (the earlier one of equals)."""
    if point[2] < bucket[1][2]:
        bucket[1] = point
    if point[2] > bucket[2][2]:
        bucket[2] = point


def _read(records: Iterable[Mapping[str, Any]], metrics: Sequence[str]) -> tuple[list[Curve], set[str]]:
    """A Curve per metric of one run's records, read once, and the metrics (not ``NOT_METRICS``) it has a
    drawable value for."""
    curves = [Curve() for _ in metrics]
    settled = set(NOT_METRICS)  # keys known to have a value, or not metrics
    for record in records:
        for key in record.keys() - settled:
            if _value(record[key]) is not None and len(settled) < MAX_LISTED_KEYS:
                settled.add(key)
        step = _value(record.get("step"))
        if step is None:
            continue
        for metric, curve in zip(metrics, curves):
            value = _value(record.get(metric))
            if value is not None:
                curve.add(step, value)
    return curves, settled - NOT_METRICS


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
    if type(value) is float:  # the common cases first: this runs for every value of every record plotted
        return value if math.isfinite(value) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _log_scaled(metric: str) -> bool:
    """Losses, objectives, errors and norms span decades; accuracies and R^2 are fractions (R^2 may be below 0),
    clearer on a linear axis."""
    return "accuracy" not in metric and not metric.endswith("_r2")


def _check_positive(labels: Sequence[str], metrics: Sequence[str], runs: Sequence[Sequence[Curve]]) -> None:
    for label, run in zip(labels, runs):
        for metric, curve in zip(metrics, run):
            if _log_scaled(metric) and curve.first_nonpositive is not None:
                step, value = curve.first_nonpositive
                raise GradfitError(
                    f"{metric} of run {label!r} is {value:g} at step {step:g}, which a log scale cannot show; "
                    "drop --log-y"
                )


def line_style(run: int, colours: int) -> tuple[int, str]:
    """The ``run``-th line's colour (an index of the palette's ``colours``) and dash: each colour solid first, then
    dashed, dotted and dash-dotted; past ``colours * len(LINE_STYLES)`` runs they repeat."""
    return run % colours, LINE_STYLES[(run // colours) % len(LINE_STYLES)]


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
                colour, style = line_style(run, len(palette))
                (line,) = ax.plot(
                    steps,
                    values,
                    color=palette[colour],
                    linestyle=style,
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
