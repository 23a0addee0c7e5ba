"""Gradient checking: reverse-mode AD against forward mode, finite differences and a hand-derived gradient.

Works on any scalar ``loss_fn(params, *args)`` and params pytree; returns result objects and prints nothing.

Finite differences are always taken in float64, of the same function at the same point and data. In float32
they resolve about three digits: too few to see a 1% error in one entry among thousands. So a float32 check
compares them with reverse mode run in float64 (the derivative rules are the same code in both precisions),
and compares the float32 gradient with the float64 one within float32 rounding (what only float32 gets wrong).

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

Small models are checked coordinate by coordinate ("full"); larger ones along random directions per parameter
group plus a sample of coordinates ("directional"), and a failing direction is bisected down to its worst entry.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradfit.errors import GradfitError
from gradfit.core.models import named_leaves
from gradfit.core.precision import Precision

__all__ = ["CheckOptions", "Report", "GroupResult", "MethodResult", "SweepRow", "check_gradient", "planted_error",
           "PASS", "FAIL", "KINK", "INCONCLUSIVE", "NOT_AVAILABLE"]

PASS, FAIL, KINK, INCONCLUSIVE, NOT_AVAILABLE = "PASS", "FAIL", "KINK", "INCONCLUSIVE", "N/A"
SEVERITY = (FAIL, INCONCLUSIVE, KINK, PASS, NOT_AVAILABLE)  # most severe first
METHODS = ("forward", "finite_difference", "manual", "float64")  # float64: only in checks of another precision
PASS_NOISE, FAIL_NOISE = 3.0, 10.0  # multiples of the finite-difference noise estimate
RESOLUTION = 1e-2  # a PASS needs finite differences good to 1% of the value (else INCONCLUSIVE)
EXACT_TOLERANCE = 1e3  # exact methods (forward, manual) may differ from reverse by this many eps (relative)
RECHECK_SHRINK = (16, 256)  # the smaller steps of a recheck, as divisors of h
TRUNCATION_SLACK = 4.0  # a recheck's disagreement may shrink this much less than h^2 predicts
STEP_LADDER = (1, 4, 16, 64)  # the steps a direction may take, as multiples of the base step
NOISE_POINTS, NOISE_LINES = 17, 5  # evaluations per line, and lines per group, that measure the noise of f
NOISE_SPAN = 1 / 64  # the lines span +-(this x the default step): few kinks fall that close, and rounding is the same
FLOAT64 = Precision("float64")


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
    worst_step: Optional[float] = None  # finite differences: the step that decided the worst entry
    checked: int = 0  # entries (coordinates) compared
    directions: int = 0  # random directions compared (directional mode)
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
    f_noise: Optional[float] = None  # eps_f: the measured noise of the loss near the point, along this group


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

    @property
    def methods(self) -> tuple:
        """The methods compared with reverse AD, in the order shown."""
        return METHODS if self.precision != "float64" else METHODS[:-1]

    def to_json(self) -> dict:
        out = {
            "verdict": self.verdict, "precision": self.precision, "num_params": self.num_params, "mode": self.mode,
            "step_rule": self.step_rule,
            "groups": [
                {"name": g.name, "size": g.size, "verdict": g.verdict.lower(), "f_noise": g.f_noise,
                 "errors": {m: (g.methods[m].error if m in g.methods else None) for m in self.methods},
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


class _Evaluators:
    """Batched evaluations of the flattened ``loss(theta, *args)`` around one point, in one precision.

    ``theta`` and ``args`` (the data) are jit arguments, not constants baked into the compiled programs.
    """

    def __init__(self, loss: Callable, theta, args: tuple, precision: Precision, batch: int):
        self.theta, self.args, self.precision, self.batch = theta, args, precision, batch
        fixed = (None,) * (1 + len(args))  # theta and the data are shared by every row of a batch
        self.along = jax.jit(jax.vmap(lambda v, d, theta, *a: loss(theta + d * v, *a), in_axes=(0, 0, *fixed)))
        self.at = jax.jit(jax.vmap(lambda i, d, theta, *a: loss(theta.at[i].add(d), *a), in_axes=(0, 0, *fixed)))
        self.jvp_along = jax.jit(jax.vmap(
            lambda v, theta, *a: jax.jvp(lambda t: loss(t, *a), (theta,), (v,))[1], in_axes=(0, *fixed)))
        self.jvp_at = jax.jit(jax.vmap(
            lambda i, theta, *a: jax.jvp(lambda t: loss(t, *a), (theta,), (jnp.zeros_like(theta).at[i].set(1),))[1],
            in_axes=(0, *fixed)))

    def batched(self, fn, *columns) -> np.ndarray:
        """Apply a vmapped fn in fixed-size batches (padded), so it compiles once whatever the count."""
        n, out = len(columns[0]), []
        batch = min(self.batch, 1 << max(0, (n - 1).bit_length()))  # a power of two: few distinct compilations
        dtype = self.theta.dtype
        columns = [c.astype(np.int32 if c.dtype.kind in "iu" else dtype) for c in columns]
        with self.precision.scope():
            for start in range(0, n, batch):
                block = [c[start:start + batch] for c in columns]
                pad = batch - len(block[0])
                block = [np.concatenate([b, np.repeat(b[-1:], pad, axis=0)]) if pad else b for b in block]
                out.append(np.asarray(fn(*block, self.theta, *self.args), np.float64)[: batch - pad])
        return np.concatenate(out) if out else np.zeros(0)


def _flat_loss(loss_fn: Callable, params, args: tuple, precision: Precision):
    """(loss(theta, *args), theta, args, unravel) with params and floating data cast to the precision."""
    dtype = precision.param_dtype
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    args = tuple(jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a)
                 for a in args)
    theta, unravel = ravel_pytree(params)
    return (lambda t, *a: loss_fn(unravel(t), *a)), theta, args, unravel


class _Problem:
    """The loss around one point: the gradient being checked (reverse AD in the checked precision), and the
    float64 evaluations that finite differences take."""

    def __init__(self, loss_fn: Callable, params, options: CheckOptions, args: tuple = ()):
        self.checked = Precision(options.precision)
        with self.checked.scope():
            loss, theta, checked_args, self.unravel = _flat_loss(loss_fn, params, args, self.checked)
            self.theta = theta
            self.f0_checked = _finite_loss(jax.jit(loss)(theta, *checked_args))
            self.reverse = np.asarray(jax.jit(jax.grad(loss))(theta, *checked_args), np.float64)
            self.exact = _Evaluators(loss, theta, checked_args, self.checked, options.batch)
        self.eps = float(jnp.finfo(self.checked.param_dtype).eps)
        self.theta64 = np.asarray(theta, np.float64)
        if self.checked.x64:
            self.fd, self.f0, self.reverse64 = self.exact, self.f0_checked, self.reverse
        else:  # the same point and data, exactly, in float64
            with FLOAT64.scope():
                params64 = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), self.unravel(theta))
                loss64, theta64, args64, _ = _flat_loss(loss_fn, params64, args, FLOAT64)
                self.f0 = _finite_loss(jax.jit(loss64)(theta64, *args64))
                self.reverse64 = np.asarray(jax.jit(jax.grad(loss64))(theta64, *args64), np.float64)
                self.fd = _Evaluators(loss64, theta64, args64, FLOAT64, options.batch)
        self.eps64 = float(np.finfo(np.float64).eps)
        self.step_base = options.step if options.step is not None else self.eps64 ** (1 / 3)
        self.full = options.full if options.full is not None else self.theta.size <= options.threshold
        self.groups, offset = [], 0
        for name, leaf in named_leaves(self.unravel(theta)).items():
            self.groups.append(_Group(name, offset, int(leaf.size), tuple(leaf.shape)))
            offset += int(leaf.size)

    def losses_at(self, index: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """float64 losses at theta + delta e_index."""
        return self.fd.batched(self.fd.at, index, delta)

    def losses_along(self, vectors: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """float64 losses at theta + delta v."""
        return self.fd.batched(self.fd.along, vectors, delta)

    def forward_at(self, index: np.ndarray) -> np.ndarray:
        return self.exact.batched(self.exact.jvp_at, index)

    def forward_along(self, vectors: np.ndarray) -> np.ndarray:
        return self.exact.batched(self.exact.jvp_along, vectors)

    def group_step(self, group: _Group) -> float:
        """The finite-difference step of a direction supported on the group."""
        support = np.abs(self.theta64[group.offset:group.offset + group.size])
        return self.step_base * max(1.0, float(support.max(initial=0.0)))


def _finite_loss(value) -> float:
    value = float(value)
    if not np.isfinite(value):
        raise GradfitError(f"the loss is {value} at the point being checked; a gradient check needs a finite loss")
    return value


def _noise_level(problem: _Problem, group: _Group, lines: np.ndarray) -> float:
    """eps_f: the noise of the float64 loss near theta, moving along ``lines`` (unit vectors on the group).

    f is evaluated at ``NOISE_POINTS`` equally spaced points across [-h, h] on each line (h = ``NOISE_SPAN`` x
    the default step, eps^(1/3) scaled): where f is smooth it is a cubic there to far below its rounding, so the
    scatter about a least-squares cubic is the noise (More and Wild, "Estimating computational noise", 2011),
    while the inputs still change in every bit that rounding sees. A line that crosses a kink (a ReLU
    pre-activation) is no cubic and would pass its hinge for noise: the median over the lines leaves it out.
    At least half an eps of |f|: the last rounding of the loss is always there.
    """
    h = NOISE_SPAN * problem.group_step(group) * problem.eps64 ** (1 / 3) / problem.step_base  # whatever --step
    u = np.linspace(-1.0, 1.0, NOISE_POINTS)
    deltas = np.tile(u * h, len(lines))
    if np.all(np.count_nonzero(lines, axis=1) == 1):  # single entries: the coordinates' own compiled program
        values = problem.losses_at(np.repeat(np.argmax(lines != 0, axis=1), NOISE_POINTS), deltas)
    else:
        values = problem.losses_along(np.repeat(lines, NOISE_POINTS, axis=0), deltas)
    values = values.reshape(len(lines), NOISE_POINTS).T - problem.f0
    basis = np.vander(u, 4)
    residual = values - basis @ np.linalg.lstsq(basis, values, rcond=None)[0]
    scatter = np.sqrt(np.sum(residual ** 2, axis=0) / (NOISE_POINTS - 4))
    return max(float(np.median(scatter)), 0.5 * problem.eps64 * abs(problem.f0))


def _coordinate_lines(problem: _Problem, group: _Group, rng) -> np.ndarray:
    """``NOISE_LINES`` coordinate vectors of the group, drawn among its entries of above-median gradient.

    Coordinate checks move one entry: their noise is measured the same way (a random line through a ReLU network
    crosses more kinks). Entries the loss hardly depends on would show less noise than the rest: left out.
    """
    size = np.abs(problem.reverse64[group.offset:group.offset + group.size])
    candidates = np.flatnonzero(size >= np.median(size))
    picks = rng.choice(candidates, size=min(NOISE_LINES, len(candidates)), replace=False)
    lines = np.zeros((len(picks), problem.theta.size))
    lines[np.arange(len(picks)), group.offset + picks] = 1.0
    return lines


@dataclasses.dataclass
class _Differences:
    """Finite differences of one batch of entries (coordinates or directions)."""

    step: np.ndarray  # h
    central: np.ndarray  # D(h)
    noise: np.ndarray  # |D(h) - D(h/2)| + floor
    floor: np.ndarray  # 2 eps_f / h: the noise of D(h/2) that f's own noise alone causes
    forward_side: np.ndarray  # (f(t + h v) - f(t)) / h
    backward_side: np.ndarray  # (f(t) - f(t - h v)) / h
    smooth: np.ndarray  # bool: the one-sided gap halves with h, as it does where the function is smooth


def _differences(problem: _Problem, evaluate: Callable, steps: np.ndarray, f_noise: float) -> _Differences:
    """evaluate(deltas) -> losses for deltas stacked as +h, -h, +h/2, -h/2 over the entries."""
    k = len(steps)
    values = evaluate(np.concatenate([steps, -steps, steps / 2, -steps / 2]))
    plus, minus, plus2, minus2 = values[:k], values[k:2 * k], values[2 * k:3 * k], values[3 * k:]
    f0 = problem.f0
    central, central2 = (plus - minus) / (2 * steps), (plus2 - minus2) / steps
    floor = 2 * f_noise / steps
    # Where f is smooth the gap between the one-sided differences is ~ f'' h: it halves with h, and it dwarfs
    # the O(h^2) change of the central difference. A kink within h of theta breaks one or the other.
    gap, gap2 = np.abs(plus - 2 * f0 + minus) / steps, np.abs(plus2 - 2 * f0 + minus2) / (steps / 2)
    # (where f'' ~ 0 the gap is noise and says nothing of the central difference: the first test alone decides)
    smooth = ((np.abs(gap2 - gap / 2) <= 0.25 * gap + floor)
              & ((2 * np.abs(central - central2) <= 0.25 * gap + floor) | (gap <= 4 * floor)))
    return _Differences(steps.astype(np.float64), central, np.abs(central - central2) + floor, floor, (plus - f0) / steps,
                        (f0 - minus) / steps, smooth)


def _fd_verdicts(diff: _Differences, reference: np.ndarray) -> np.ndarray:
    """PASS only where f is smooth within h and the differences resolve the value to 1% (of the entry or of the
    group's typical size); where they agree but cannot resolve it, INCONCLUSIVE; where a step left f's domain
    (NaN or inf), INCONCLUSIVE too. A kink inflates the Richardson difference, so it never passes at its step."""
    finite = np.isfinite(diff.central) & np.isfinite(diff.noise)
    error = np.abs(diff.central - reference)
    scale = np.maximum(np.abs(reference), np.sqrt(np.mean(reference ** 2)))
    resolved = PASS_NOISE * diff.noise <= RESOLUTION * scale
    low = np.minimum(diff.forward_side, diff.backward_side) - PASS_NOISE * diff.noise
    high = np.maximum(diff.forward_side, diff.backward_side) + PASS_NOISE * diff.noise
    kink = ~diff.smooth & (reference >= low) & (reference <= high)
    agree = error <= PASS_NOISE * diff.noise
    verdicts = np.where(agree & resolved & diff.smooth, PASS,
                        np.where(kink, KINK, np.where(agree | (error <= FAIL_NOISE * diff.noise), INCONCLUSIVE, FAIL)))
    return np.where(finite, verdicts, INCONCLUSIVE)


def _fd_check(problem: _Problem, evaluate: Callable, steps: np.ndarray, reference: np.ndarray, f_noise: float):
    """Differences at ``steps``; entries that do not pass are rechecked at smaller steps (``RECHECK_SHRINK``).

    Truncation error and a kink within h shrink with the step; an error in the gradient does not. So a
    recheck overturns a verdict only where (1) it could see the doubt the first step left, the larger of its
    disagreement and its noise, at ``FAIL_NOISE`` times its own noise, and (2) the disagreement shrank from the
    previous step's at least as truncation error does (~h^2, within ``TRUNCATION_SLACK``), down to the
    recheck's noise floor. A KINK or INCONCLUSIVE entry whose smaller step is smooth and fails is a FAIL.
    """
    diff = _differences(problem, evaluate, steps, f_noise)
    verdicts = _fd_verdicts(diff, reference)
    last_error = np.nan_to_num(np.abs(diff.central - reference), nan=np.inf)  # a step out of f's domain
    doubt = np.maximum(last_error, np.nan_to_num(diff.noise, nan=np.inf))
    last_shrink = 1
    for shrink in RECHECK_SHRINK:
        retry = np.flatnonzero(verdicts != PASS)
        if len(retry) == 0:
            break
        smaller = _differences(problem, lambda d, r=retry: evaluate(d, r), steps[retry] / shrink, f_noise)
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


def _combine(verdicts) -> str:
    """The most severe verdict of a set (N/A only when nothing else is there)."""
    verdicts = set(verdicts)
    return next((v for v in SEVERITY if v in verdicts), NOT_AVAILABLE)


def _method_result(method, values, reference, verdicts, labels, ratio, flat) -> MethodResult:
    """Summarize per-entry values/verdicts; the worst entry has the largest error ratio among the entries of
    the most severe verdict (the one the group's verdict comes from)."""
    norm = np.linalg.norm(reference)
    error = float(np.linalg.norm(values - reference) / norm) if norm > 0 else float(np.linalg.norm(values))
    severity = np.array([SEVERITY.index(v) for v in verdicts])
    worst = int(np.argmax(np.where(severity == severity.min(), ratio, -np.inf)))
    count = {"checked": len(values)} if flat is not None else {"directions": len(values)}
    return MethodResult(
        method, _combine(verdicts), error, labels[worst], None if flat is None else int(flat[worst]),
        None if flat is not None else worst, float(values[worst]), float(reference[worst]), **count,
        kinks=int(np.sum(verdicts == KINK)), inconclusive=int(np.sum(verdicts == INCONCLUSIVE)),
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
        loss_fn: ``loss_fn(params, *args) -> scalar``; traced in the checked precision and in float64.
        params: the point to check at (any pytree of arrays); cast to the checked precision.
        manual_grad: optional ``params -> gradient`` pytree of the same structure, e.g. hand-derived in NumPy.
        options: precision, finite-difference step, full vs directional mode.
        args: arrays passed to ``loss_fn`` after params (the data), as jit arguments rather than constants.
        sweep: also tabulate the finite-difference error against the step (``Report.sweep``), in the checked
            precision: what its finite differences can resolve.

    Returns:
        A Report; its ``verdict`` is "fail" if any group fails, "inconclusive" if any entry could not be decided.
    """
    problem = _Problem(loss_fn, params, options, args)
    manual = None if manual_grad is None else _flat_manual_gradient(problem, manual_grad)
    forward_ok = _forward_mode_available(problem)
    rng = np.random.default_rng(options.seed)
    check_group = _check_group_full if problem.full else _check_group_directional
    groups = []
    for group in problem.groups:
        f_noise = _noise_level(problem, group, _coordinate_lines(problem, group, rng))
        result = check_group(problem, group, manual, forward_ok, options, rng, f_noise)
        if not problem.checked.x64:
            result.methods["float64"] = _against_float64(problem, group)
            result.methods["finite_difference"].note = "; ".join(
                n for n in (result.methods["finite_difference"].note, "in float64, against reverse AD in float64")
                if n)
            result.verdict = _combine(m.verdict for m in result.methods.values())
        result.f_noise = f_noise
        groups.append(result)
    verdicts = {g.verdict for g in groups}
    overall = "fail" if FAIL in verdicts else "inconclusive" if INCONCLUSIVE in verdicts else "pass"
    rule = f"h = {'eps^(1/3)' if options.step is None else f'{options.step:g}'} * max(1, |theta|), float64"
    report = Report(overall, options.precision, int(problem.theta.size),
                    "full" if problem.full else "directional", rule, groups)
    if sweep:
        report.sweep, report.sweep_shape = _sweep(problem, options, groups)
    return report


def _flat_manual_gradient(problem: _Problem, manual_grad: Callable) -> np.ndarray:
    point = problem.unravel(problem.theta)
    grad = manual_grad(jax.tree_util.tree_map(np.asarray, point))
    leaves, point_leaves = jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(point)
    if jax.tree_util.tree_structure(grad) != jax.tree_util.tree_structure(point) or any(
            np.shape(g) != np.shape(p) for g, p in zip(leaves, point_leaves)):
        raise GradfitError("the hand-derived gradient does not have the structure and shapes of the params")
    return np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in leaves]) if leaves else np.zeros(0)


def _forward_mode_available(problem: _Problem) -> bool:
    exact = problem.exact
    try:  # traced, not compiled: the answer is in the rules, and a compile costs a tenth of a second
        with exact.precision.scope():
            jax.eval_shape(exact.jvp_at, np.zeros(1, np.int32), exact.theta, *exact.args)
        return True
    except TypeError:  # e.g. jax.custom_vjp functions have no forward-mode rule
        return False


def _against_float64(problem: _Problem, group: _Group) -> MethodResult:
    """Reverse AD in float64 against the checked precision's, on every entry, within that precision's rounding."""
    index = np.arange(group.offset, group.offset + group.size)
    reference = problem.reverse[index]
    verdicts, ratio = _exact_verdicts(problem.reverse64[index], reference, problem.eps, problem.f0_checked)
    return _method_result("float64", problem.reverse64[index], reference, verdicts,
                          [_index_label(group, i) for i in range(group.size)], ratio, np.arange(group.size))


def _coordinate_steps(problem: _Problem, index: np.ndarray) -> np.ndarray:
    """h = step_base * max(1, |theta_i|), adjusted to the step float64 actually takes from theta_i."""
    theta = problem.theta64[index]
    steps = problem.step_base * np.maximum(1.0, np.abs(theta))
    return (theta + steps) - theta


def _index_label(group: _Group, flat: int) -> str:
    return str([int(i) for i in np.unravel_index(flat, group.shape)]) if group.shape else "[]"


def _check_group_full(problem, group, manual, forward_ok, options, rng, f_noise) -> GroupResult:
    return _check_coordinates(problem, group, manual, forward_ok, np.arange(group.size), f_noise)


def _random_directions(problem: _Problem, group: _Group, count: int, rng) -> np.ndarray:
    """(count, P) unit vectors, Gaussian on the group's entries and zero elsewhere."""
    vectors = np.zeros((count, problem.theta.size))
    vectors[:, group.offset:group.offset + group.size] = rng.standard_normal((count, group.size))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _check_group_directional(problem, group, manual, forward_ok, options, rng, f_noise) -> GroupResult:
    if group.size <= options.coordinates:  # a small group: every entry costs no more than the sample would
        return _check_group_full(problem, group, manual, forward_ok, options, rng, f_noise)
    vectors = _random_directions(problem, group, options.directions, rng)
    sample = rng.choice(group.size, size=options.coordinates, replace=False)
    direction_noise = _noise_level(problem, group, _random_directions(problem, group, NOISE_LINES, rng))
    result = _check_directions(problem, group, manual, forward_ok, vectors, direction_noise)
    fd = result.methods["finite_difference"]
    if fd.verdict == FAIL:  # narrow the failing direction down to its worst coordinate
        k = fd.worst_direction
        flat, spread = _bisect(problem, group, vectors[k], direction_noise, fd.worst_step)
        fd.note = f"direction {k} narrowed to entry {_index_label(group, flat)}" + (
            " (both halves fail: the error is spread over many entries)" if spread else "")
        sample = np.union1d(sample, [flat])
    if len(sample):  # on a tie the merged result names a coordinate rather than a direction
        result = _merge(_check_coordinates(problem, group, manual, forward_ok, sample, f_noise), result)
    if manual is not None:  # the hand-derived gradient is at hand for every coordinate: compare them all
        everything = _check_coordinates(problem, group, manual, False, np.arange(group.size), f_noise,
                                        methods=("manual",))
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
            worse, error=max(errors) if errors else None, checked=x.checked + y.checked,
            directions=x.directions + y.directions, kinks=x.kinks + y.kinks,
            inconclusive=x.inconclusive + y.inconclusive, failures=x.failures + y.failures,
            note="; ".join(n for n in (x.note, y.note) if n))
    return GroupResult(a.name, a.size, a.shape, _combine(m.verdict for m in methods.values()), methods)


def _check_coordinates(problem, group, manual, forward_ok, flat: np.ndarray, f_noise: float,
                       methods=("finite_difference", "forward", "manual")) -> GroupResult:
    """Check the group's entries ``flat`` (indices within the group) with each of ``methods``."""
    index = group.offset + flat

    def evaluate(deltas, rows=slice(None)):
        return problem.losses_at(np.tile(index[rows], 4), deltas)

    return _summarize(
        problem, group, methods, [_index_label(group, i) for i in flat], flat, index, evaluate,
        _coordinate_steps(problem, index), f_noise,
        forward=lambda: problem.forward_at(index) if forward_ok else None,
        manual_values=None if manual is None else manual[index],
    )


def _check_directions(problem, group, manual, forward_ok, vectors: np.ndarray, f_noise: float) -> GroupResult:
    """Check directional derivatives along the rows of ``vectors`` (supported on the group)."""

    def evaluate(deltas, rows=slice(None)):
        return problem.losses_along(np.tile(vectors[rows], (4, 1)), deltas)

    steps = _best_steps(problem, evaluate, problem.group_step(group), len(vectors), f_noise)

    return _summarize(
        problem, group, ("finite_difference", "forward", "manual"), [f"direction {k}" for k in range(len(vectors))],
        None, vectors, evaluate, steps, f_noise,
        forward=lambda: problem.forward_along(vectors) if forward_ok else None,
        manual_values=None if manual is None else vectors @ manual,
    )


def _best_steps(problem: _Problem, evaluate: Callable, base: float, count: int, f_noise: float) -> np.ndarray:
    """Per entry, the step of ``STEP_LADDER`` x ``base`` whose differences have the smallest noise estimate.

    eps^(1/3) balances truncation and round-off for a function whose third derivative is about 1; along a
    direction spread over thousands of entries it is usually far smaller, and round-off dominates. The noise
    estimate (the Richardson difference plus the floor) measures both, so the data choose the step. A few
    directions can afford the extra evaluations; coordinates keep the base step.
    """
    noise = np.stack([_differences(problem, evaluate, np.full(count, base * k), f_noise).noise
                      for k in STEP_LADDER])
    return base * np.asarray(STEP_LADDER)[np.argmin(noise, axis=0)]


def _summarize(problem, group, methods, labels, flat, where, evaluate, steps, f_noise, forward, manual_values):
    """Run the requested methods on one set of entries and summarize each against reverse AD.

    ``where`` is the entries' flat indices (coordinates) or the rows of unit vectors (directions).
    """
    def project(gradient):
        return gradient[where] if flat is not None else where @ gradient

    results = {}
    if "finite_difference" in methods:  # in float64, against reverse AD in float64
        reference = project(problem.reverse64)
        diff, verdicts = _fd_check(problem, evaluate, steps, reference, f_noise)
        ratio = np.abs(diff.central - reference) / np.maximum(diff.noise, 1e-300)
        fd = _method_result("finite_difference", diff.central, reference, verdicts, labels, ratio, flat)
        fd.worst_step = float(diff.step[labels.index(fd.worst)])
        results["finite_difference"] = fd
    reference = project(problem.reverse)
    exact = {"forward": forward() if "forward" in methods else None, "manual": manual_values}
    for name in ("forward", "manual"):
        if name not in methods:
            continue
        values = exact[name]
        if values is None:
            note = "no forward-mode rule (custom_vjp)" if name == "forward" else "no hand-derived gradient"
            results[name] = MethodResult(name, NOT_AVAILABLE, note=note)
            continue
        verdicts, ratio = _exact_verdicts(values, reference, problem.eps, problem.f0_checked)
        results[name] = _method_result(name, values, reference, verdicts, labels, ratio, flat)
    return GroupResult(group.name, group.size, group.shape, _combine(m.verdict for m in results.values()), results)


def _bisect(problem: _Problem, group: _Group, direction: np.ndarray, f_noise: float,
            step: float) -> tuple[int, bool]:
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
        reference = vectors @ problem.reverse64
        steps = np.full(2, step)
        repeat = np.tile(vectors, (4, 1))
        diff = _differences(problem, lambda d: problem.losses_along(repeat, d), steps, f_noise)
        ratio = np.abs(diff.central - reference) / np.maximum(diff.noise, 1e-300)
        if spread is None:
            spread = bool(np.all(ratio > FAIL_NOISE))
        support = halves[int(np.argmax(ratio))]
    return int(support[0] - group.offset), bool(spread)


SWEEP_STEPS = tuple(10.0 ** -k for k in range(1, 11))


def _sweep(problem: _Problem, options: CheckOptions, groups: list, steps=SWEEP_STEPS) -> tuple[list, str]:
    """Norm-relative error of central differences in the checked precision against its reverse AD, per step.

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
        values = problem.exact.batched(problem.exact.at, np.tile(index, 2), np.concatenate([deltas, -deltas]))
        central = (values[: len(index)] - values[len(index):]) / (2 * deltas)
        rows.append(SweepRow(float(h), float(np.linalg.norm(central - reference) / (norm if norm > 0 else 1.0))))
    errors = np.array([r.error for r in rows])
    best = int(np.argmin(errors))
    floor_width = int(np.sum(errors <= 3 * errors[best]))  # a V has a sharp minimum; a floor spans several steps
    falls = best == 0 or errors[0] >= 10 * errors[best]  # truncation error falls on the large-step side
    shape = "V" if floor_width < 3 and falls and errors[best] < RESOLUTION else "flat"
    return rows, shape


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
