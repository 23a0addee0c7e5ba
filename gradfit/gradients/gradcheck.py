"""Gradient checking: reverse-mode AD against forward mode, finite differences and a hand-derived gradient.

Works on any scalar ``loss_fn(params, *args)`` and params pytree; returns a ``Report`` and prints nothing (its
``callbacks`` are told each stage, parameter group and method as it starts: ``CheckCallbacks``).

Finite differences are always taken in float64, of the same function at the same point and data. In float32
they resolve about three digits: too few to see a 1% error in one entry among thousands. So a float32 check
compares them with reverse mode run in float64 (the derivative rules are the same code in both precisions),
and compares the float32 gradient with the float64 one within float32 rounding (what only float32 gets wrong).

Small models are checked coordinate by coordinate ("full"); larger ones along random directions per parameter
group plus a sample of coordinates ("directional"), and a failing direction is bisected down to its worst entry.

The parts: the point and its evaluations (``checked_point``), finite differences and their noise
(``finite_differences``), the methods exact to rounding (``exact_methods``), the verdicts and the report
(``check_report``) and the step-size study (``step_sweep``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from gradfit.core.precision import PrecisionName
from gradfit.gradients.check_report import (
    FAIL,
    INCONCLUSIVE,
    NOT_AVAILABLE,
    SEVERITY,
    GroupResult,
    MethodResult,
    Report,
    combine_verdicts,
    method_result,
)
from gradfit.gradients.checked_point import CheckedPoint, Group, index_label
from gradfit.gradients.exact_methods import (
    against_float64,
    exact_verdicts,
    flat_manual_gradient,
    forward_mode_available,
)
from gradfit.gradients.finite_differences import (
    FAIL_NOISE,
    NOISE_LINES,
    best_steps,
    check_finite_differences,
    coordinate_lines,
    coordinate_steps,
    differences,
    noise_level,
)
from gradfit.gradients.step_sweep import step_sweep

__all__ = ["CheckCallbacks", "CheckOptions", "check_gradient", "planted_error"]


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """How to check. ``step`` replaces eps^(1/3) in the finite-difference step rule."""

    precision: PrecisionName = "float64"
    step: float | None = None
    full: bool | None = None  # None: full below ``threshold`` parameters, directional above
    threshold: int = 5000
    directions: int = 8  # per group, in directional mode
    coordinates: int = 16  # sampled per group, in directional mode
    seed: int = 0
    batch: int = 128  # loss evaluations per vmapped device call


class CheckCallbacks:
    """Progress hooks of ``check_gradient``, which prints nothing itself; override what you need. Any object with
    some of these methods will do: the others are skipped, and one that raises is not called again."""

    def on_stage(self, message: str) -> None:
        """A step outside the groups: 'compiling the loss and its gradient', 'step-size sweep'."""

    def on_group(self, index: int, total: int, name: str, size: int) -> None:
        """Parameter group ``index`` (from 0) of ``total`` starts: its pytree path and its number of entries."""

    def on_method(self, method: str) -> None:
        """A method starts on the current group: 'noise' (measuring the loss noise), 'finite_difference',
        'forward', 'manual', 'float64' (reverse AD in float64) or 'bisect' (narrowing a failing direction)."""


class _Teller:
    """Calls the hooks a callbacks object has; a display that fails (a closed pipe) is dropped, not the check."""

    def __init__(self, callbacks: object = None):
        self.callbacks = callbacks

    def __call__(self, hook: str, *args: object) -> None:
        call = getattr(self.callbacks, hook, None)
        if call is None:
            return
        try:
            call(*args)
        except (Exception, SystemExit):  # Rich exits on a broken pipe
            self.callbacks = None


def check_gradient(
    loss_fn: Callable,
    params,
    manual_grad: Callable | None = None,
    options: CheckOptions = CheckOptions(),
    args: tuple = (),
    sweep: bool = False,
    callbacks: Any = None,
) -> Report:
    """Check ``jax.grad(loss_fn)`` at ``params`` against forward mode, finite differences and ``manual_grad``.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``; traced in the checked precision and in float64.
        params: the point to check at (any pytree of arrays); cast to the checked precision.
        manual_grad: optional ``params -> gradient`` pytree of the same structure, e.g. hand-derived in NumPy.
        options: precision, finite-difference step, full vs directional mode.
        args: arrays passed to ``loss_fn`` after params (the data), as jit arguments rather than constants.
        sweep: also tabulate the finite-difference error against the step (``Report.sweep``), in the checked
            precision: what its finite differences can resolve.
        callbacks: progress hooks (``CheckCallbacks``, or any object with some of its methods); None: silent.

    Returns:
        A Report; its ``verdict`` is "fail" if any group fails, "inconclusive" if any entry could not be decided.
    """
    tell = _Teller(callbacks)
    tell("on_stage", "compiling the loss and its gradient")
    point = CheckedPoint(
        loss_fn,
        params,
        args,
        precision=options.precision,
        step=options.step,
        full=options.full,
        threshold=options.threshold,
        batch=options.batch,
    )
    manual = None if manual_grad is None else flat_manual_gradient(point, manual_grad)
    forward_ok = forward_mode_available(point)
    rng = np.random.default_rng(options.seed)
    check_group = _check_group_full if point.full else _check_group_directional
    groups = []
    for index, group in enumerate(point.groups):
        tell("on_group", index, len(point.groups), group.name, group.size)
        tell("on_method", "noise")
        f_noise = noise_level(point, group, coordinate_lines(point, group, rng))
        result = check_group(point, group, manual, forward_ok, options, rng, f_noise, tell)
        if not point.checked.x64:
            tell("on_method", "float64")
            _add_float64(point, group, result)
        result.f_noise = f_noise
        groups.append(result)
    verdicts = {g.verdict for g in groups}
    overall = "fail" if FAIL in verdicts else "inconclusive" if INCONCLUSIVE in verdicts else "pass"
    rule = f"h = {'eps^(1/3)' if options.step is None else f'{options.step:g}'} * max(1, |theta|), float64"
    report = Report(
        overall, options.precision, int(point.theta.size), "full" if point.full else "directional", rule, groups
    )
    if sweep:
        tell("on_stage", "step-size sweep")
        report.sweep, report.sweep_shape = step_sweep(point, options.seed, options.coordinates, groups)
    return report


def _add_float64(point: CheckedPoint, group: Group, result: GroupResult) -> None:
    """In a check of another precision: add reverse AD in float64 as a method, and say what finite differences,
    taken in float64, were compared with."""
    result.methods["float64"] = against_float64(point, group)
    result.methods["finite_difference"].note = "; ".join(
        n for n in (result.methods["finite_difference"].note, "in float64, against reverse AD in float64") if n
    )
    result.verdict = combine_verdicts(m.verdict for m in result.methods.values())


def _check_group_full(point, group, manual, forward_ok, options, rng, f_noise, tell) -> GroupResult:
    return _check_coordinates(point, group, manual, forward_ok, np.arange(group.size), f_noise, tell)


def _random_directions(point: CheckedPoint, group: Group, count: int, rng) -> np.ndarray:
    """(count, P) unit vectors, Gaussian on the group's entries and zero elsewhere."""
    vectors = np.zeros((count, point.theta.size))
    vectors[:, group.offset : group.offset + group.size] = rng.standard_normal((count, group.size))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _check_group_directional(point, group, manual, forward_ok, options, rng, f_noise, tell) -> GroupResult:
    if group.size <= options.coordinates:  # a small group: every entry costs no more than the sample would
        return _check_group_full(point, group, manual, forward_ok, options, rng, f_noise, tell)
    vectors = _random_directions(point, group, options.directions, rng)
    sample = rng.choice(group.size, size=options.coordinates, replace=False)
    direction_noise = noise_level(point, group, _random_directions(point, group, NOISE_LINES, rng))
    result = _check_directions(point, group, manual, forward_ok, vectors, direction_noise, tell)
    fd = result.methods["finite_difference"]
    if fd.verdict == FAIL:  # narrow the failing direction down to its worst coordinate
        tell("on_method", "bisect")
        k = fd.worst_direction
        flat, spread = _bisect(point, group, vectors[k], direction_noise, fd.worst_step)
        fd.note = f"direction {k} narrowed to entry {index_label(group, flat)}" + (
            " (both halves fail: the error is spread over many entries)" if spread else ""
        )
        sample = np.union1d(sample, [flat])
    if len(sample):  # on a tie the merged result names a coordinate rather than a direction
        result = _merge(_check_coordinates(point, group, manual, forward_ok, sample, f_noise, tell), result)
    if manual is not None:  # the hand-derived gradient is at hand for every coordinate: compare them all
        everything = _check_coordinates(
            point, group, manual, False, np.arange(group.size), f_noise, tell, methods=("manual",)
        )
        result.methods["manual"] = everything.methods["manual"]
        result.verdict = combine_verdicts(m.verdict for m in result.methods.values())
    return result


def _merge(a: GroupResult, b: GroupResult) -> GroupResult:
    """Combine the results of two sets of entries of one group; the worse result names the worst entry."""
    methods = {}
    for name in a.methods:
        x, y = a.methods[name], b.methods[name]
        worse = x if SEVERITY.index(x.verdict) <= SEVERITY.index(y.verdict) else y
        errors = [e for e in (x.error, y.error) if e is not None]
        methods[name] = dataclasses.replace(
            worse,
            error=max(errors) if errors else None,
            checked=x.checked + y.checked,
            directions=x.directions + y.directions,
            kinks=x.kinks + y.kinks,
            inconclusive=x.inconclusive + y.inconclusive,
            failures=x.failures + y.failures,
            note="; ".join(n for n in (x.note, y.note) if n),
        )
    return GroupResult(a.name, a.size, a.shape, combine_verdicts(m.verdict for m in methods.values()), methods)


def _check_coordinates(
    point,
    group,
    manual,
    forward_ok,
    flat: np.ndarray,
    f_noise: float,
    tell: _Teller,
    methods=("finite_difference", "forward", "manual"),
) -> GroupResult:
    """Check the group's entries ``flat`` (indices within the group) with each of ``methods``."""
    index = group.offset + flat

    def evaluate(deltas, rows=slice(None)):
        return point.losses_at(np.tile(index[rows], 4), deltas)

    return _summarize(
        point,
        group,
        methods,
        [index_label(group, i) for i in flat],
        flat,
        index,
        evaluate,
        coordinate_steps(point, index),
        f_noise,
        tell,
        forward=lambda: point.forward_at(index) if forward_ok else None,
        manual_values=None if manual is None else manual[index],
    )


def _check_directions(point, group, manual, forward_ok, vectors: np.ndarray, f_noise: float, tell) -> GroupResult:
    """Check directional derivatives along the rows of ``vectors`` (supported on the group)."""

    def evaluate(deltas, rows=slice(None)):
        return point.losses_along(np.tile(vectors[rows], (4, 1)), deltas)

    tell("on_method", "finite_difference")  # choosing each direction's step is finite differences' work
    steps = best_steps(point, evaluate, point.group_step(group), len(vectors), f_noise)

    return _summarize(
        point,
        group,
        ("finite_difference", "forward", "manual"),
        [f"direction {k}" for k in range(len(vectors))],
        None,
        vectors,
        evaluate,
        steps,
        f_noise,
        tell,
        forward=lambda: point.forward_along(vectors) if forward_ok else None,
        manual_values=None if manual is None else vectors @ manual,
    )


def _summarize(point, group, methods, labels, flat, where, evaluate, steps, f_noise, tell, forward, manual_values):
    """Run the requested methods on one set of entries and summarize each against reverse AD.

    ``where`` is the entries' flat indices (coordinates) or the rows of unit vectors (directions).
    """

    def project(gradient):
        return gradient[where] if flat is not None else where @ gradient

    results = {}
    if "finite_difference" in methods:  # in float64, against reverse AD in float64
        tell("on_method", "finite_difference")
        reference = project(point.reverse64)
        diff, verdicts = check_finite_differences(point, evaluate, steps, reference, f_noise)
        ratio = np.abs(diff.central - reference) / np.maximum(diff.noise, 1e-300)
        fd = method_result("finite_difference", diff.central, reference, verdicts, labels, ratio, flat)
        fd.worst_step = float(diff.step[labels.index(fd.worst)])
        results["finite_difference"] = fd
    reference = project(point.reverse)
    for name in ("forward", "manual"):
        if name not in methods:
            continue
        tell("on_method", name)
        values = forward() if name == "forward" else manual_values
        if values is None:
            note = "no forward-mode rule (custom_vjp)" if name == "forward" else "no hand-derived gradient"
            results[name] = MethodResult(name, NOT_AVAILABLE, note=note)
            continue
        verdicts, ratio = exact_verdicts(values, reference, point.eps, point.f0_checked)
        results[name] = method_result(name, values, reference, verdicts, labels, ratio, flat)
    return GroupResult(
        group.name, group.size, group.shape, combine_verdicts(m.verdict for m in results.values()), results
    )


def _bisect(point: CheckedPoint, group: Group, direction: np.ndarray, f_noise: float, step: float) -> tuple[int, bool]:
    """Halve a failing direction's support, following the half whose finite differences disagree most.

    Returns (flat index within the group, whether both halves of the first split failed).
    """
    support = np.arange(group.offset, group.offset + group.size)
    support = support[direction[support] != 0]
    spread = None
    while len(support) > 1:
        halves = np.array_split(support, 2)
        vectors = np.zeros((2, direction.size))
        for row, half in enumerate(halves):
            vectors[row, half] = direction[half]
        reference = vectors @ point.reverse64
        steps = np.full(2, step)
        repeat = np.tile(vectors, (4, 1))
        diff = differences(point, lambda d, rows=repeat: point.losses_along(rows, d), steps, f_noise)
        ratio = np.abs(diff.central - reference) / np.maximum(diff.noise, 1e-300)
        if spread is None:
            spread = bool(np.all(ratio > FAIL_NOISE))
        support = halves[int(np.argmax(ratio))]
    return int(support[0] - group.offset), bool(spread)


def planted_error(loss_fn: Callable, index: int, relative: float) -> Callable:
    """``loss_fn`` with a known bug: the gradient's entry ``index`` (flat, in ravel order) scaled by 1 + ``relative``.

    The loss values are untouched (a ``jax.custom_vjp``), as with a wrong derivative rule: what a checker must
    find. Use it to measure what ``check_gradient`` can see on your own model. ``loss_fn(params, *args)``.
    """

    @jax.custom_vjp
    def planted(params, *args):
        return loss_fn(params, *args)

    def backward(residual, cotangent):
        grads, args = residual
        flat, unravel = ravel_pytree(grads)
        scaled = unravel(flat.at[index].multiply(1 + relative))
        return (jax.tree_util.tree_map(lambda g: g * cotangent, scaled), *([None] * len(args)))

    def forward_rule(params, *args):
        value, grads = jax.value_and_grad(loss_fn)(params, *args)
        return value, (grads, args)  # the data only for their count: no cotangent flows to them

    planted.defvjp(forward_rule, backward)
    return planted
