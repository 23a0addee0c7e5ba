"""The step-size study: the error of central differences in the checked precision against the step.

Its shape tells a right gradient from a wrong one: a V (truncation ~ h^2 on the large-step side, round-off
~ eps/h on the other) around a sharp minimum, or a flat floor that no step gets below.
"""

from __future__ import annotations

import numpy as np

from gradfit.errors import GradfitError
from gradfit.gradients.check_report import SweepRow
from gradfit.gradients.checked_point import CheckedPoint
from gradfit.gradients.finite_differences import RESOLUTION

SWEEP_STEPS = tuple(10.0**-k for k in range(1, 11))


def step_sweep(point: CheckedPoint, seed: int, coordinates: int, groups: list, steps=SWEEP_STEPS) -> tuple[list, str]:
    """Norm-relative error of central differences in the checked precision against its reverse AD, per step.

    All coordinates in full mode; otherwise a sample of ``coordinates`` per group (drawn from ``seed`` + 1) plus
    the worst entry each group's check found (``groups``: its GroupResults), so that a localized error is in the
    sweep.

    Returns (rows, shape): "V" when the error has a sharp minimum (truncation ~ h^2 on the large-step side,
    round-off ~ eps/h on the other); "flat" when it levels off at a floor instead, the mark of a wrong gradient.
    """
    if point.full:
        index = np.arange(point.theta.size)
    else:
        rng = np.random.default_rng(seed + 1)
        picks: list = [g.offset + rng.choice(g.size, min(coordinates, g.size), replace=False) for g in point.groups]
        offsets = {g.name: g.offset for g in point.groups}
        picks += [
            [offsets[g.name] + g.methods["finite_difference"].worst_index]
            for g in groups
            if g.methods["finite_difference"].worst_index is not None
        ]
        index = np.unique(np.concatenate(picks)).astype(int)
        if len(index) == 0:
            raise GradfitError("the sweep needs at least one coordinate per group (--coordinates >= 1)")
    reference = point.reverse[index]
    norm = np.linalg.norm(reference)
    scale = np.maximum(1.0, np.abs(point.theta64[index]))
    rows = []
    for h in steps:
        deltas = h * scale
        values = point.exact.batched(point.exact.at, np.tile(index, 2), np.concatenate([deltas, -deltas]))
        central = (values[: len(index)] - values[len(index) :]) / (2 * deltas)
        rows.append(SweepRow(float(h), float(np.linalg.norm(central - reference) / (norm if norm > 0 else 1.0))))
    errors = np.array([r.error for r in rows])
    best = int(np.argmin(errors))
    floor_width = int(np.sum(errors <= 3 * errors[best]))  # a V has a sharp minimum; a floor spans several steps
    falls = best == 0 or errors[0] >= 10 * errors[best]  # truncation error falls on the large-step side
    shape = "V" if floor_width < 3 and falls and errors[best] < RESOLUTION else "flat"
    return rows, shape
