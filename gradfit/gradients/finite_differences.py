"""Finite differences against reverse AD, and how far to trust them.

The central difference ``D(h) = (f(t + h v) - f(t - h v)) / 2h``, ``h = eps^(1/3) * max(1, |t|)``, is paired
with ``D(h/2)``, and its noise is estimated from the data, never from a worst-case bound: the Richardson
difference ``|D(h) - D(h/2)|`` (truncation, and the round-off of these very evaluations), plus a floor
``2 eps_f / h``, where ``eps_f``, the noise of f itself, is the scatter of 17 evaluations along lines through
the point about a cubic fit (Moré and Wild 2011), the median over five lines per parameter group: along its
entries (for coordinates) or random directions (for directions). An entry passes when
``|D(h) - reverse| <= 3 * noise`` and the noise is below 1% of the value; it fails beyond 10 * noise and is
INCONCLUSIVE between. Where the one-sided differences disagree and their gap does not shrink with h (a kink,
e.g. a ReLU pre-activation near 0), the entry is KINK, and passes if reverse AD lies between them.

Entries that do not pass are rechecked at h/16, then h/256. A recheck may overturn a verdict only where the
smaller step can see the doubt the first step left (its noise is a tenth of it) and the disagreement shrank as
truncation error does (about h^2): an error in the gradient does not shrink with h, and the round-off of a tiny
step must not hide it. A KINK or INCONCLUSIVE entry whose smaller step is smooth and fails there is a FAIL.

Always in float64, of the same function at the same point and data (``CheckedPoint.losses_at``/``losses_along``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from gradfit.gradients.check_report import FAIL, INCONCLUSIVE, KINK, PASS
from gradfit.gradients.checked_point import CheckedPoint, Group

PASS_NOISE, FAIL_NOISE = 3.0, 10.0  # multiples of the finite-difference noise estimate
RESOLUTION = 1e-2  # a PASS needs finite differences good to 1% of the value (else INCONCLUSIVE)
RECHECK_SHRINK = (16, 256)  # the smaller steps of a recheck, as divisors of h
TRUNCATION_SLACK = 4.0  # a recheck's disagreement may shrink this much less than h^2 predicts
STEP_LADDER = (1, 4, 16, 64)  # the steps a direction may take, as multiples of the base step
NOISE_POINTS, NOISE_LINES = 17, 5  # evaluations per line, and lines per group, that measure the noise of f
NOISE_SPAN = 1 / 64  # the lines span +-(this x the default step): few kinks fall that close, and rounding is the same


def noise_level(point: CheckedPoint, group: Group, lines: np.ndarray) -> float:
    """eps_f: the noise of the float64 loss near theta, moving along ``lines`` (unit vectors on the group).

    f is evaluated at ``NOISE_POINTS`` equally spaced points across [-h, h] on each line (h = ``NOISE_SPAN`` x
    the default step, eps^(1/3) scaled): where f is smooth it is a cubic there to far below its rounding, so the
    scatter about a least-squares cubic is the noise (More and Wild, "Estimating computational noise", 2011),
    while the inputs still change in every bit that rounding sees. A line that crosses a kink (a ReLU
    pre-activation) is no cubic and would pass its hinge for noise: the median over the lines leaves it out.
    At least half an eps of |f|: the last rounding of the loss is always there.
    """
    h = NOISE_SPAN * point.group_step(group) * point.eps64 ** (1 / 3) / point.step_base  # whatever --step
    u = np.linspace(-1.0, 1.0, NOISE_POINTS)
    deltas = np.tile(u * h, len(lines))
    if np.all(np.count_nonzero(lines, axis=1) == 1):  # single entries: the coordinates' own compiled program
        values = point.losses_at(np.repeat(np.argmax(lines != 0, axis=1), NOISE_POINTS), deltas)
    else:
        values = point.losses_along(np.repeat(lines, NOISE_POINTS, axis=0), deltas)
    values = values.reshape(len(lines), NOISE_POINTS).T - point.f0
    basis = np.vander(u, 4)
    residual = values - basis @ np.linalg.lstsq(basis, values, rcond=None)[0]
    scatter = np.sqrt(np.sum(residual**2, axis=0) / (NOISE_POINTS - 4))
    return max(float(np.median(scatter)), 0.5 * point.eps64 * abs(point.f0))


def coordinate_lines(point: CheckedPoint, group: Group, rng) -> np.ndarray:
    """``NOISE_LINES`` coordinate vectors of the group, drawn among its entries of above-median gradient.

    Coordinate checks move one entry: their noise is measured the same way (a random line through a ReLU network
    crosses more kinks). Entries the loss hardly depends on would show less noise than the rest: left out.
    """
    size = np.abs(point.reverse64[group.offset : group.offset + group.size])
    candidates = np.flatnonzero(size >= np.median(size))
    picks = rng.choice(candidates, size=min(NOISE_LINES, len(candidates)), replace=False)
    lines = np.zeros((len(picks), point.theta.size))
    lines[np.arange(len(picks)), group.offset + picks] = 1.0
    return lines


def coordinate_steps(point: CheckedPoint, index: np.ndarray) -> np.ndarray:
    """h = step_base * max(1, |theta_i|), adjusted to the step float64 actually takes from theta_i."""
    theta = point.theta64[index]
    steps = point.step_base * np.maximum(1.0, np.abs(theta))
    return (theta + steps) - theta


@dataclasses.dataclass
class Differences:
    """Finite differences of one batch of entries (coordinates or directions)."""

    step: np.ndarray  # h
    central: np.ndarray  # D(h)
    noise: np.ndarray  # |D(h) - D(h/2)| + floor
    floor: np.ndarray  # 2 eps_f / h: the noise of D(h/2) that f's own noise alone causes
    forward_side: np.ndarray  # (f(t + h v) - f(t)) / h
    backward_side: np.ndarray  # (f(t) - f(t - h v)) / h
    smooth: np.ndarray  # bool: the one-sided gap halves with h, as it does where the function is smooth


def differences(point: CheckedPoint, evaluate: Callable, steps: np.ndarray, f_noise: float) -> Differences:
    """evaluate(deltas) -> losses for deltas stacked as +h, -h, +h/2, -h/2 over the entries."""
    k = len(steps)
    values = evaluate(np.concatenate([steps, -steps, steps / 2, -steps / 2]))
    plus, minus, plus2, minus2 = values[:k], values[k : 2 * k], values[2 * k : 3 * k], values[3 * k :]
    f0 = point.f0
    central, central2 = (plus - minus) / (2 * steps), (plus2 - minus2) / steps
    floor = 2 * f_noise / steps
    # Where f is smooth the gap between the one-sided differences is ~ f'' h: it halves with h, and it dwarfs
    # the O(h^2) change of the central difference. A kink within h of theta breaks one or the other.
    gap, gap2 = np.abs(plus - 2 * f0 + minus) / steps, np.abs(plus2 - 2 * f0 + minus2) / (steps / 2)
    # (where f'' ~ 0 the gap is noise and says nothing of the central difference: the first test alone decides)
    smooth = (np.abs(gap2 - gap / 2) <= 0.25 * gap + floor) & (
        (2 * np.abs(central - central2) <= 0.25 * gap + floor) | (gap <= 4 * floor)
    )
    return Differences(
        steps.astype(np.float64),
        central,
        np.abs(central - central2) + floor,
        floor,
        (plus - f0) / steps,
        (f0 - minus) / steps,
        smooth,
    )


def _fd_verdicts(diff: Differences, reference: np.ndarray) -> np.ndarray:
    """PASS only where f is smooth within h and the differences resolve the value to 1% (of the entry or of the
    group's typical size); where they agree but cannot resolve it, INCONCLUSIVE; where a step left f's domain
    (NaN or inf), INCONCLUSIVE too. A kink inflates the Richardson difference, so it never passes at its step."""
    finite = np.isfinite(diff.central) & np.isfinite(diff.noise)
    error = np.abs(diff.central - reference)
    scale = np.maximum(np.abs(reference), np.sqrt(np.mean(reference**2)))
    resolved = PASS_NOISE * diff.noise <= RESOLUTION * scale
    low = np.minimum(diff.forward_side, diff.backward_side) - PASS_NOISE * diff.noise
    high = np.maximum(diff.forward_side, diff.backward_side) + PASS_NOISE * diff.noise
    kink = ~diff.smooth & (reference >= low) & (reference <= high)
    agree = error <= PASS_NOISE * diff.noise
    verdicts = np.where(
        agree & resolved & diff.smooth,
        PASS,
        np.where(kink, KINK, np.where(agree | (error <= FAIL_NOISE * diff.noise), INCONCLUSIVE, FAIL)),
    )
    return np.where(finite, verdicts, INCONCLUSIVE)


def check_finite_differences(
    point: CheckedPoint, evaluate: Callable, steps: np.ndarray, reference: np.ndarray, f_noise: float
) -> tuple[Differences, np.ndarray]:
    """Differences at ``steps``; entries that do not pass are rechecked at smaller steps (``RECHECK_SHRINK``).

    Truncation error and a kink within h shrink with the step; an error in the gradient does not. So a
    recheck overturns a verdict only where (1) it could see the doubt the first step left, the larger of its
    disagreement and its noise, at ``FAIL_NOISE`` times its own noise, and (2) the disagreement shrank from the
    previous step's at least as truncation error does (~h^2, within ``TRUNCATION_SLACK``), down to the
    recheck's noise floor. A KINK or INCONCLUSIVE entry whose smaller step is smooth and fails is a FAIL.

    Returns:
        (the differences that decided each entry, each entry's verdict).
    """
    diff = differences(point, evaluate, steps, f_noise)
    verdicts = _fd_verdicts(diff, reference)
    last_error = np.nan_to_num(np.abs(diff.central - reference), nan=np.inf)  # a step out of f's domain
    doubt = np.maximum(last_error, np.nan_to_num(diff.noise, nan=np.inf))
    last_shrink = 1
    for shrink in RECHECK_SHRINK:
        retry = np.flatnonzero(verdicts != PASS)
        if len(retry) == 0:
            break
        smaller = differences(point, lambda d, r=retry: evaluate(d, r), steps[retry] / shrink, f_noise)
        error = np.nan_to_num(np.abs(smaller.central - reference[retry]), nan=np.inf)
        could_see = FAIL_NOISE * smaller.noise < doubt[retry]
        predicted = TRUNCATION_SLACK * last_error[retry] * (last_shrink / shrink) ** 2  # from the previous step
        shrank = error <= predicted + PASS_NOISE * smaller.floor
        last_error[retry], last_shrink = error, shrink
        again = _fd_verdicts(smaller, reference[retry])
        better = (again == PASS) & could_see & shrank
        # a kink's disagreement vanishes once the step is below its distance: where the smaller step is smooth
        # and fails, the failure is the gradient's, whatever the kink made of the larger step
        worse = np.isin(verdicts[retry], (KINK, INCONCLUSIVE)) & (again == FAIL) & smaller.smooth
        changed = better | worse
        for field in dataclasses.fields(diff):
            getattr(diff, field.name)[retry[changed]] = getattr(smaller, field.name)[changed]
        verdicts[retry[changed]] = again[changed]
    return diff, verdicts


def best_steps(point: CheckedPoint, evaluate: Callable, base: float, count: int, f_noise: float) -> np.ndarray:
    """Per entry, the step of ``STEP_LADDER`` x ``base`` whose differences have the smallest noise estimate.

    eps^(1/3) balances truncation and round-off for a function whose third derivative is about 1; along a
    direction spread over thousands of entries it is usually far smaller, and round-off dominates. The noise
    estimate (the Richardson difference plus the floor) measures both, so the data choose the step. A few
    directions can afford the extra evaluations; coordinates keep the base step.
    """
    noise = np.stack([differences(point, evaluate, np.full(count, base * k), f_noise).noise for k in STEP_LADDER])
    return base * np.asarray(STEP_LADDER)[np.argmin(noise, axis=0)]
