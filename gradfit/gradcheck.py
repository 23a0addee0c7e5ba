"""Gradient checking: reverse-mode AD against forward mode, finite differences and a hand-derived gradient.

Works on any scalar ``loss_fn(params)`` and params pytree; returns result objects and prints nothing.

Finite differences are central, ``D(h) = (f(t + h v) - f(t - h v)) / 2h`` with ``h = eps^(1/3) * max(1, |t|)``.
Each is paired with ``D(h/2)``: for a smooth function the error of ``D(h)`` is 4/3 of ``|D(h) - D(h/2)|``
(Richardson), and that difference also carries the round-off, so it is an honest per-entry noise estimate.
An entry passes when ``|D(h) - reverse| <= 3 * noise``; it is INCONCLUSIVE up to 10 * noise (the finite
differences cannot resolve it) and FAIL beyond. Where the one-sided differences disagree and their gap does not
shrink with h (a kink, e.g. a ReLU pre-activation near 0), the entry is KINK, and passes if reverse AD lies between.

Small models are checked coordinate by coordinate ("full"); larger ones along random directions per parameter
group plus a sample of coordinates ("directional"), and a failing direction is bisected down to its worst entry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradfit.errors import GradfitError
from gradfit.models import named_leaves
from gradfit.precision import Precision

__all__ = ["CheckOptions", "Report", "GroupResult", "MethodResult", "SweepRow", "check_gradient",
           "ConfigProblem", "problem_from_config", "PASS", "FAIL", "KINK", "INCONCLUSIVE", "NOT_AVAILABLE"]

PASS, FAIL, KINK, INCONCLUSIVE, NOT_AVAILABLE = "PASS", "FAIL", "KINK", "INCONCLUSIVE", "N/A"
SEVERITY = (FAIL, INCONCLUSIVE, KINK, PASS, NOT_AVAILABLE)  # most severe first
METHODS = ("forward", "finite_difference", "manual")
PASS_NOISE, FAIL_NOISE = 3.0, 10.0  # multiples of the finite-difference noise estimate
RESOLUTION = 1e-2  # a PASS needs finite differences good to 1% of the value (else INCONCLUSIVE)
EXACT_TOLERANCE = 1e3  # exact methods (forward, manual) may differ from reverse by this many eps (relative)


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """How to check. ``step`` replaces eps^(1/3) in the finite-difference step rule."""

    precision: str = "float64"
    step: Optional[float] = None
    full: Optional[bool] = None  # None: full below ``threshold`` parameters, directional above
    threshold: int = 5000
    directions: int = 8  # per group, in directional mode
    coordinates: int = 16  # sampled per group, in directional mode
    seed: int = 0
    batch: int = 128  # loss evaluations per vmapped device call


@dataclasses.dataclass
class MethodResult:
    """One method against reverse AD on one parameter group."""

    method: str
    verdict: str
    error: Optional[float] = None  # ||method - reverse|| / ||reverse|| over the checked entries
    worst: Optional[str] = None  # where the worst entry is: "[3, 7]" or "direction 2"
    worst_index: Optional[int] = None  # flat index of the worst entry within its group (None for a direction)
    worst_direction: Optional[int] = None  # which random direction was worst (directional mode)
    worst_value: Optional[float] = None
    worst_reference: Optional[float] = None
    checked: int = 0
    kinks: int = 0
    inconclusive: int = 0
    failures: int = 0
    note: str = ""


@dataclasses.dataclass
class GroupResult:
    name: str
    size: int
    shape: tuple
    verdict: str
    methods: dict  # method name -> MethodResult


@dataclasses.dataclass
class SweepRow:
    step: float
    error: float  # norm-relative error of finite differences against reverse AD


@dataclasses.dataclass
class Report:
    verdict: str  # "pass" | "fail" | "inconclusive"
    precision: str
    num_params: int
    mode: str  # "full" | "directional"
    step_rule: str
    groups: list
    sweep: Optional[list] = None
    sweep_shape: Optional[str] = None  # "V" | "flat"

    def to_json(self) -> dict:
        out = {
            "verdict": self.verdict, "precision": self.precision, "num_params": self.num_params, "mode": self.mode,
            "step_rule": self.step_rule,
            "groups": [
                {"name": g.name, "size": g.size, "verdict": g.verdict.lower(),
                 "errors": {m: (g.methods[m].error if m in g.methods else None) for m in METHODS},
                 "methods": {m: dataclasses.asdict(r) for m, r in g.methods.items()}}
                for g in self.groups
            ],
        }
        if self.sweep is not None:
            out["sweep"] = {"shape": self.sweep_shape, "rows": [dataclasses.asdict(r) for r in self.sweep]}
        return out


@dataclasses.dataclass
class _Group:
    name: str
    offset: int
    size: int
    shape: tuple


class _Problem:
    """The flattened loss ``loss(theta, *args)`` and batched evaluators around one point ``theta``.

    ``theta`` and ``args`` (the data) are jit arguments, not constants baked into the compiled programs.
    """

    def __init__(self, loss_fn: Callable, params, options: CheckOptions, args: tuple = ()):
        dtype = Precision(options.precision).param_dtype
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
        self.theta, self.unravel = ravel_pytree(params)
        self.theta64 = np.asarray(self.theta, np.float64)
        self.args = args
        self.eps = float(jnp.finfo(dtype).eps)
        self.batch = options.batch
        self.step_base = options.step if options.step is not None else self.eps ** (1 / 3)
        self.full = options.full if options.full is not None else self.theta.size <= options.threshold
        self.groups, offset = [], 0
        for name, leaf in named_leaves(params).items():
            self.groups.append(_Group(name, offset, int(leaf.size), tuple(leaf.shape)))
            offset += int(leaf.size)

        def loss(theta, *args):
            return loss_fn(self.unravel(theta), *args)

        self.f0 = float(jax.jit(loss)(self.theta, *args))
        if not np.isfinite(self.f0):
            raise GradfitError(f"the loss is {self.f0} at the point being checked; a gradient check needs a finite loss")
        self.reverse = np.asarray(jax.jit(jax.grad(loss))(self.theta, *args), np.float64)
        fixed = (None,) * (1 + len(args))  # theta and the data are shared by every row of a batch
        self._along = jax.jit(jax.vmap(lambda v, d, theta, *a: loss(theta + d * v, *a), in_axes=(0, 0, *fixed)))
        self._at = jax.jit(jax.vmap(lambda i, d, theta, *a: loss(theta.at[i].add(d), *a), in_axes=(0, 0, *fixed)))
        self._jvp_along = jax.jit(jax.vmap(
            lambda v, theta, *a: jax.jvp(lambda t: loss(t, *a), (theta,), (v,))[1], in_axes=(0, *fixed)))
        self._jvp_at = jax.jit(jax.vmap(
            lambda i, theta, *a: jax.jvp(lambda t: loss(t, *a), (theta,), (jnp.zeros_like(theta).at[i].set(1),))[1],
            in_axes=(0, *fixed)))

    def _batched(self, fn, *columns) -> np.ndarray:
        """Apply a vmapped fn in fixed-size batches (padded), so it compiles once whatever the count."""
        n, out = len(columns[0]), []
        batch = min(self.batch, 1 << max(0, (n - 1).bit_length()))  # a power of two: few distinct compilations
        for start in range(0, n, batch):
            block = [c[start:start + batch] for c in columns]
            pad = batch - len(block[0])
            block = [np.concatenate([b, np.repeat(b[-1:], pad, axis=0)]) if pad else b for b in block]
            out.append(np.asarray(fn(*block, self.theta, *self.args), np.float64)[: batch - pad])
        return np.concatenate(out) if out else np.zeros(0)

    def losses_at(self, index: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self._batched(self._at, index.astype(np.int32), delta.astype(self.theta.dtype))

    def losses_along(self, vectors: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self._batched(self._along, vectors.astype(self.theta.dtype), delta.astype(self.theta.dtype))

    def forward_at(self, index: np.ndarray) -> np.ndarray:
        return self._batched(self._jvp_at, index.astype(np.int32))

    def forward_along(self, vectors: np.ndarray) -> np.ndarray:
        return self._batched(self._jvp_along, vectors.astype(self.theta.dtype))


@dataclasses.dataclass
class _Differences:
    """Finite differences of one batch of entries (coordinates or directions)."""

    central: np.ndarray  # D(h)
    noise: np.ndarray  # |D(h) - D(h/2)| + a round-off floor
    forward_side: np.ndarray  # (f(t + h v) - f(t)) / h
    backward_side: np.ndarray  # (f(t) - f(t - h v)) / h
    smooth: np.ndarray  # bool: the one-sided gap halves with h, as it does where the function is smooth


def _differences(problem: _Problem, evaluate: Callable, steps: np.ndarray) -> _Differences:
    """evaluate(deltas) -> losses for deltas stacked as +h, -h, +h/2, -h/2 over the entries."""
    k = len(steps)
    values = evaluate(np.concatenate([steps, -steps, steps / 2, -steps / 2]))
    plus, minus, plus2, minus2 = values[:k], values[k:2 * k], values[2 * k:3 * k], values[3 * k:]
    f0 = problem.f0
    central, central2 = (plus - minus) / (2 * steps), (plus2 - minus2) / steps
    # rounding of the loss values themselves: a few eps of their size, divided by the step
    roundoff = 4 * problem.eps * np.maximum(abs(f0), np.maximum(np.abs(plus), np.abs(minus))) / steps
    # Where f is smooth the gap between the one-sided differences is ~ f'' h: it halves with h, and it dwarfs
    # the O(h^2) change of the central difference. A kink within h of theta breaks one or the other.
    gap, gap2 = np.abs(plus - 2 * f0 + minus) / steps, np.abs(plus2 - 2 * f0 + minus2) / (steps / 2)
    smooth = ((np.abs(gap2 - gap / 2) <= 0.25 * gap + roundoff)
              & (2 * np.abs(central - central2) <= 0.25 * gap + roundoff))
    return _Differences(central, np.abs(central - central2) + roundoff, (plus - f0) / steps, (f0 - minus) / steps,
                        smooth)


def _fd_verdicts(diff: _Differences, reference: np.ndarray) -> np.ndarray:
    """PASS only where the differences resolve the value to 1% (of the entry or of the group's typical size);
    where they agree but cannot resolve it, INCONCLUSIVE."""
    error = np.abs(diff.central - reference)
    scale = np.maximum(np.abs(reference), np.sqrt(np.mean(reference ** 2)))
    resolved = PASS_NOISE * diff.noise <= RESOLUTION * scale
    low = np.minimum(diff.forward_side, diff.backward_side) - PASS_NOISE * diff.noise
    high = np.maximum(diff.forward_side, diff.backward_side) + PASS_NOISE * diff.noise
    kink = ~diff.smooth & (reference >= low) & (reference <= high)
    agree = error <= PASS_NOISE * diff.noise
    return np.where(agree & resolved, PASS,
                    np.where(kink, KINK, np.where(agree | (error <= FAIL_NOISE * diff.noise), INCONCLUSIVE, FAIL)))


def _fd_check(problem: "_Problem", evaluate: Callable, steps: np.ndarray, reference: np.ndarray):
    """Differences at ``steps``; entries that do not pass are retried at steps/16 and steps/256, since
    truncation error and kinks within h shrink with the step while an error in the gradient does not."""
    diff = _differences(problem, evaluate, steps)
    verdicts = _fd_verdicts(diff, reference)
    for shrink in (16, 256):
        retry = np.flatnonzero(verdicts != PASS)
        if len(retry) == 0:
            break
        smaller = _differences(problem, lambda d, r=retry: evaluate(d, r), steps[retry] / shrink)
        better = _fd_verdicts(smaller, reference[retry]) == PASS
        for field in dataclasses.fields(diff):
            getattr(diff, field.name)[retry[better]] = getattr(smaller, field.name)[better]
        verdicts[retry[better]] = PASS
    return diff, verdicts


def _combine(verdicts) -> str:
    """The most severe verdict of a set (N/A only when nothing else is there)."""
    verdicts = set(verdicts)
    return next((v for v in SEVERITY if v in verdicts), NOT_AVAILABLE)


def _method_result(method, values, reference, verdicts, labels, ratio, flat) -> MethodResult:
    """Summarize per-entry values/verdicts; the worst entry is the one with the largest error ratio."""
    norm = np.linalg.norm(reference)
    error = float(np.linalg.norm(values - reference) / norm) if norm > 0 else float(np.linalg.norm(values))
    worst = int(np.argmax(ratio))
    return MethodResult(
        method, _combine(verdicts), error, labels[worst], None if flat is None else int(flat[worst]),
        None if flat is not None else worst, float(values[worst]), float(reference[worst]),
        checked=len(values), kinks=int(np.sum(verdicts == KINK)), inconclusive=int(np.sum(verdicts == INCONCLUSIVE)),
        failures=int(np.sum(verdicts == FAIL)),
    )


def _exact_verdicts(values: np.ndarray, reference: np.ndarray, eps: float, f0: float) -> tuple[np.ndarray, np.ndarray]:
    # rounding scales with the size of the summed terms, not with a gradient that is ~0 at an optimum: |f| floors it
    tolerance = EXACT_TOLERANCE * eps * (np.abs(reference) + np.max(np.abs(reference), initial=0.0) + abs(f0)
                                         + 1e-300)
    ratio = np.abs(values - reference) / tolerance
    return np.where(ratio <= 1, PASS, FAIL), ratio


def check_gradient(loss_fn: Callable, params, manual_grad: Optional[Callable] = None,
                   options: CheckOptions = CheckOptions(), args: tuple = (), sweep: bool = False) -> Report:
    """Check ``jax.grad(loss_fn)`` at ``params`` against forward mode, finite differences and ``manual_grad``.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``.
        params: the point to check at (any pytree of arrays); cast to the checked precision.
        manual_grad: optional ``params -> gradient`` pytree of the same structure, e.g. hand-derived in NumPy.
        options: precision, finite-difference step, full vs directional mode.
        args: arrays passed to ``loss_fn`` after params (the data), as jit arguments rather than constants.
        sweep: also tabulate the finite-difference error against the step (``Report.sweep``).

    Returns:
        A Report; its ``verdict`` is "fail" if any group fails, "inconclusive" if any entry could not be decided.
    """
    with Precision(options.precision).scope():
        problem = _Problem(loss_fn, params, options, args)
        manual = None if manual_grad is None else _flat_manual_gradient(problem, manual_grad)
        forward_ok = _forward_mode_available(problem)
        rng = np.random.default_rng(options.seed)
        check_group = _check_group_full if problem.full else _check_group_directional
        groups = [check_group(problem, group, manual, forward_ok, options, rng) for group in problem.groups]
        verdicts = {g.verdict for g in groups}
        overall = "fail" if FAIL in verdicts else "inconclusive" if INCONCLUSIVE in verdicts else "pass"
        rule = f"h = {'eps^(1/3)' if options.step is None else f'{options.step:g}'} * max(1, |theta|)"
        report = Report(overall, options.precision, int(problem.theta.size),
                        "full" if problem.full else "directional", rule, groups)
        if sweep:
            report.sweep, report.sweep_shape = _sweep(problem, options, groups)
    return report


def _flat_manual_gradient(problem: "_Problem", manual_grad: Callable) -> np.ndarray:
    point = problem.unravel(problem.theta)
    grad = manual_grad(jax.tree_util.tree_map(np.asarray, point))
    leaves, point_leaves = jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(point)
    if jax.tree_util.tree_structure(grad) != jax.tree_util.tree_structure(point) or any(
            np.shape(g) != np.shape(p) for g, p in zip(leaves, point_leaves)):
        raise GradfitError("the hand-derived gradient does not have the structure and shapes of the params")
    return np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in leaves]) if leaves else np.zeros(0)


def _forward_mode_available(problem: _Problem) -> bool:
    try:
        problem.forward_at(np.zeros(1, np.int32))
        return True
    except TypeError:  # e.g. jax.custom_vjp functions have no forward-mode rule
        return False


def _coordinate_steps(problem: _Problem, index: np.ndarray) -> np.ndarray:
    theta = problem.theta64
    return problem.step_base * np.maximum(1.0, np.abs(theta[index]))


def _index_label(group: _Group, flat: int) -> str:
    return str([int(i) for i in np.unravel_index(flat, group.shape)]) if group.shape else "[]"


def _check_group_full(problem, group, manual, forward_ok, options, rng) -> GroupResult:
    return _check_coordinates(problem, group, manual, forward_ok, np.arange(group.size))


def _random_directions(problem: _Problem, group: _Group, count: int, rng) -> np.ndarray:
    """(count, P) unit vectors, Gaussian on the group's entries and zero elsewhere."""
    vectors = np.zeros((count, problem.theta.size))
    vectors[:, group.offset:group.offset + group.size] = rng.standard_normal((count, group.size))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _check_group_directional(problem, group, manual, forward_ok, options, rng) -> GroupResult:
    vectors = _random_directions(problem, group, options.directions, rng)
    sample = rng.choice(group.size, size=min(options.coordinates, group.size), replace=False)
    result = _check_directions(problem, group, manual, forward_ok, vectors)
    fd = result.methods["finite_difference"]
    if fd.verdict == FAIL:  # narrow the failing direction down to its worst coordinate
        k = fd.worst_direction
        flat, spread = _bisect(problem, group, vectors[k])
        fd.note = f"direction {k} narrowed to entry {_index_label(group, flat)}" + (
            " (both halves fail: the error is spread over many entries)" if spread else "")
        sample = np.union1d(sample, [flat])
    if len(sample):  # on a tie the merged result names a coordinate rather than a direction
        result = _merge(_check_coordinates(problem, group, manual, forward_ok, sample), result)
    if manual is not None:  # the hand-derived gradient is at hand for every coordinate: compare them all
        everything = _check_coordinates(problem, group, manual, False, np.arange(group.size), methods=("manual",))
        result.methods["manual"] = everything.methods["manual"]
        result.verdict = _combine(m.verdict for m in result.methods.values())
    return result


def _merge(a: GroupResult, b: GroupResult) -> GroupResult:
    """Combine the results of two sets of entries of one group; the worse result names the worst entry."""
    methods = {}
    for name in a.methods:
        x, y = a.methods[name], b.methods[name]
        worse = x if SEVERITY.index(x.verdict) <= SEVERITY.index(y.verdict) else y
        errors = [e for e in (x.error, y.error) if e is not None]
        methods[name] = dataclasses.replace(
            worse, error=max(errors) if errors else None, checked=x.checked + y.checked, kinks=x.kinks + y.kinks,
            inconclusive=x.inconclusive + y.inconclusive, failures=x.failures + y.failures,
            note="; ".join(n for n in (x.note, y.note) if n))
    return GroupResult(a.name, a.size, a.shape, _combine(m.verdict for m in methods.values()), methods)


def _check_coordinates(problem, group, manual, forward_ok, flat: np.ndarray,
                       methods=("finite_difference", "forward", "manual")) -> GroupResult:
    """Check the group's entries ``flat`` (indices within the group) with each of ``methods``."""
    index = group.offset + flat

    def evaluate(deltas, rows=slice(None)):
        return problem.losses_at(np.tile(index[rows], 4), deltas)

    return _summarize(
        problem, group, methods, [_index_label(group, i) for i in flat], flat, problem.reverse[index],
        evaluate, _coordinate_steps(problem, index),
        forward=lambda: problem.forward_at(index) if forward_ok else None,
        manual_values=None if manual is None else manual[index],
    )


def _check_directions(problem, group, manual, forward_ok, vectors: np.ndarray) -> GroupResult:
    """Check directional derivatives along the rows of ``vectors`` (supported on the group)."""
    support = np.abs(problem.theta64[group.offset:group.offset + group.size])
    steps = np.full(len(vectors), problem.step_base * max(1.0, float(support.max(initial=0.0))))

    def evaluate(deltas, rows=slice(None)):
        return problem.losses_along(np.tile(vectors[rows], (4, 1)), deltas)

    return _summarize(
        problem, group, ("finite_difference", "forward", "manual"), [f"direction {k}" for k in range(len(vectors))],
        None, vectors @ problem.reverse, evaluate, steps,
        forward=lambda: problem.forward_along(vectors) if forward_ok else None,
        manual_values=None if manual is None else vectors @ manual,
    )


def _summarize(problem, group, methods, labels, flat, reference, evaluate, steps, forward, manual_values):
    """Run the requested methods on one set of entries and summarize each against reverse AD."""
    results = {}
    if "finite_difference" in methods:
        diff, verdicts = _fd_check(problem, evaluate, steps, reference)
        ratio = np.abs(diff.central - reference) / np.maximum(diff.noise, 1e-300)
        results["finite_difference"] = _method_result("finite_difference", diff.central, reference, verdicts,
                                                      labels, ratio, flat)
    exact = {"forward": forward() if "forward" in methods else None, "manual": manual_values}
    for name in ("forward", "manual"):
        if name not in methods:
            continue
        values = exact[name]
        if values is None:
            note = "no forward-mode rule (custom_vjp)" if name == "forward" else "no hand-derived gradient"
            results[name] = MethodResult(name, NOT_AVAILABLE, note=note)
            continue
        verdicts, ratio = _exact_verdicts(values, reference, problem.eps, problem.f0)
        results[name] = _method_result(name, values, reference, verdicts, labels, ratio, flat)
    return GroupResult(group.name, group.size, group.shape, _combine(m.verdict for m in results.values()), results)


def _bisect(problem: _Problem, group: _Group, direction: np.ndarray) -> tuple[int, bool]:
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
        reference = vectors @ problem.reverse
        steps = np.full(2, problem.step_base * max(1.0, float(np.abs(problem.theta64)[support].max())))
        repeat = np.tile(vectors, (4, 1))
        diff = _differences(problem, lambda d: problem.losses_along(repeat, d), steps)
        ratio = np.abs(diff.central - reference) / np.maximum(diff.noise, 1e-300)
        if spread is None:
            spread = bool(np.all(ratio > FAIL_NOISE))
        support = halves[int(np.argmax(ratio))]
    return int(support[0] - group.offset), bool(spread)


SWEEP_STEPS = tuple(10.0 ** -k for k in range(1, 11))


def _sweep(problem: _Problem, options: CheckOptions, groups: list, steps=SWEEP_STEPS) -> tuple[list, str]:
    """Norm-relative error of central differences against reverse AD for each step, over coordinates.

    All coordinates in full mode; otherwise a seeded sample per group plus the worst entry each group's check
    found, so that a localized error is in the sweep.

    Returns (rows, shape): "V" when the error has a sharp minimum (truncation ~ h^2 on the large-step side,
    round-off ~ eps/h on the other); "flat" when it levels off at a floor instead, the mark of a wrong gradient.
    """
    if problem.full:
        index = np.arange(problem.theta.size)
    else:
        rng = np.random.default_rng(options.seed + 1)
        picks = [g.offset + rng.choice(g.size, min(options.coordinates, g.size), replace=False)
                 for g in problem.groups]
        offsets = {g.name: g.offset for g in problem.groups}
        picks += [[offsets[g.name] + g.methods["finite_difference"].worst_index] for g in groups
                  if g.methods["finite_difference"].worst_index is not None]
        index = np.unique(np.concatenate(picks)).astype(int)
        if len(index) == 0:
            raise GradfitError("the sweep needs at least one coordinate per group (--coordinates >= 1)")
    reference = problem.reverse[index]
    norm = np.linalg.norm(reference)
    scale = np.maximum(1.0, np.abs(problem.theta64[index]))
    rows = []
    for h in steps:
        deltas = h * scale
        values = problem.losses_at(np.tile(index, 2), np.concatenate([deltas, -deltas]))
        central = (values[: len(index)] - values[len(index):]) / (2 * deltas)
        rows.append(SweepRow(float(h), float(np.linalg.norm(central - reference) / (norm if norm > 0 else 1.0))))
    errors = np.array([r.error for r in rows])
    best = int(np.argmin(errors))
    floor_width = int(np.sum(errors <= 3 * errors[best]))  # a V has a sharp minimum; a floor spans several steps
    falls = best == 0 or errors[0] >= 10 * errors[best]  # truncation error falls on the large-step side
    shape = "V" if floor_width < 3 and falls and errors[best] < RESOLUTION else "flat"
    return rows, shape




@dataclasses.dataclass
class ConfigProblem:
    """What compare-grads checks for a config: the training loss at a point, and its hand-derived gradient."""

    loss_fn: Callable  # (params, x, y) -> training objective
    params: object
    manual_grad: Callable
    description: str
    args: tuple  # (x, y): the training rows, as device arrays


def problem_from_config(config, at_run: Optional[str] = None, precision: str = "float64",
                        max_rows: int = 10_000) -> ConfigProblem:
    """The config's regularized training objective on (up to ``max_rows`` of) its training split.

    The point is the run's saved parameters (``at_run``), else the model's initial parameters; logistic
    regression starts at zero, where central differences are exact by symmetry, so it is checked at a seeded
    random point instead.
    """
    with Precision(precision).scope():
        return _problem_from_config(config, at_run, precision, max_rows)


def _problem_from_config(config, at_run, precision, max_rows) -> ConfigProblem:
    from gradfit.data import load_dataset, split_arrays
    from gradfit.errors import RunDirError
    from gradfit.losses import logistic_manual_grad, make_objective, mlp_manual_grad
    from gradfit.models import build_model, params_from_named
    from gradfit.runs import load_arrays

    from gradfit import resources

    dtype = Precision(precision).param_dtype
    resources.check_synthetic(config, resources.host_available_bytes())  # as train does: refuse before allocating
    dataset = load_dataset(config)
    device = jax.devices()[0]
    needed = resources.estimate_run(config, dataset.n_features, dataset.n_classes,
                                    (min(len(dataset.train), max_rows), 0, 0), None, 1)
    resources.check_run(config, needed, resources.device_available_bytes(device), str(device))
    model = build_model(config.model, dataset.n_features, dataset.n_classes)
    x, y = split_arrays(dataset.train, dataset.n_classes, dtype)
    x, y = x[:max_rows], y[:max_rows]
    key = jax.random.PRNGKey(config.seed)  # the same initial parameters `gradfit train` starts from
    params = model.init(key, dtype)
    if at_run is not None:
        path = Path(at_run, "params.npz")
        if not (path.exists() or path.is_symlink()):
            raise RunDirError(f"{at_run}: no params.npz here; is it a finished gradfit run directory?")
        try:
            params = params_from_named(params, load_arrays(path), str(path))
        except ValueError as exc:
            raise RunDirError(f"{exc}; pass the config the run was trained with") from None
        where = f"parameters of {at_run}"
    elif config.model.kind == "logistic":
        w_key, b_key = jax.random.split(key)
        params = {"w": jax.random.normal(w_key, params["w"].shape, dtype) / np.sqrt(dataset.n_features),
                  "b": jax.random.normal(b_key, (), dtype)}
        where = f"a random point (seed {config.seed})"
    else:
        where = f"the initial parameters (seed {config.seed})"
    l2 = config.model.l2
    if config.model.kind == "logistic":
        manual = lambda p: logistic_manual_grad(p, x, y, l2)  # noqa: E731
    else:
        manual = lambda p: mlp_manual_grad(p, x, y, config.model.activation, l2)  # noqa: E731
    description = (f"{config.model.kind} on {dataset.name}: training objective over {len(y):,} rows "
                   f"(l2 = {l2:g}), at {where}")
    return ConfigProblem(make_objective(model.apply, l2), params, manual, description, (jnp.asarray(x), jnp.asarray(y)))
