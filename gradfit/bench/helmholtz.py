"""The Helmholtz free energy study: the cost of a full gradient by five methods as the number of variables grows.

This reproduces the timing study of Baydin, Pearlmutter, Radul and Siskind, "Automatic differentiation in machine
learning: a survey" (JMLR 18, 2018), whose example is the Helmholtz free energy of a mixed fluid under the
Peng-Robinson equation of state (from Griewank and Walther, "Evaluating Derivatives", 2008)::

    f(x) = RT sum_i x_i log(x_i / (1 - b.x))
           - (x'Ax / (sqrt(8) b.x)) log((1 + (1 + sqrt 2) b.x) / (1 + (1 - sqrt 2) b.x))

for mole numbers ``x`` in R^n. The full gradient is computed by reverse-mode AD (``jax.grad``), forward-mode AD
(``jax.jacfwd``), central finite differences, the hand-derived closed form (``helmholtz_gradient``) and SymPy's
symbolic differentiation, and each is timed as a multiple of one evaluation of ``f``. The survey's result is that
reverse mode stays within a small constant multiple of ``f`` whatever n (the cheap gradient principle), forward
mode and finite differences grow about linearly in n (one pass per variable), and symbolic differentiation is
worse still: the derivative expressions swell, and every one of the n of them repeats ``x'Ax``.

Constants (``problem``), chosen so the point lies well inside the domain (x_i > 0, 0 < b.x < 1) for every n:

- ``x_i ~ U(0.5, 1.5)``: of order 1, so the finite-difference step ``eps^(1/3) * max(1, |x_i|)`` is small against
  every x_i and the truncation error stays small;
- ``b_i ~ U(0.1, 0.5) / n``, so ``b.x`` lies in (0.05, 0.75) and is about 0.3 for large n: ``log(1 - b.x)`` and
  the Peng-Robinson logarithm stay far from their singularities;
- ``A = (M + M') / 2`` with ``M_ij ~ U(0, 1) / n``: symmetric and positive, as the attraction parameters
  ``a_ij`` of a mixture are; the 1/n makes ``x'Ax`` of order n, like the entropy term;
- ``RT = 1`` (units in which the gas constant times the temperature is one), so both terms weigh about as much.

Everything runs in float64. Functions return JSON-ready dicts and print nothing.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.bench.timing import compile_side_by_side, dispatch_floor, growth_exponent, growth_fit, measure, record
from gradfit.core.precision import Precision

RT = 1.0
METHODS = ("reverse", "forward", "finite_difference", "manual", "symbolic")
SYMBOLIC_BUDGET_S = 5.0  # symbolic differentiation stops growing n once one size's set-up takes longer than this
SYMPY_HINT = "SymPy is not installed: pip install 'gradfit[symbolic]'"

FULL: MappingProxyType[str, Any] = MappingProxyType(
    {"sizes": tuple(2**k for k in range(11)), "repeats": 5, "symbolic_max_n": 32}
)
QUICK: MappingProxyType[str, Any] = MappingProxyType(
    {"sizes": tuple(2**k for k in range(7)), "repeats": 3, "symbolic_max_n": 8}
)

_FLOAT64 = Precision("float64")
_SQRT2 = math.sqrt(2.0)


class Problem(NamedTuple):
    """One instance of the study: the point and the constants, NumPy float64.

    Attributes:
        x: (n,) mole numbers, all positive.
        b: (n,) co-volumes, with 0 < b.x < 1.
        A: (n, n) symmetric attraction parameters.
        rt: the gas constant times the temperature.
    """

    x: np.ndarray
    b: np.ndarray
    A: np.ndarray
    rt: float


def problem(n: int, seed: int = 0) -> Problem:
    """The constants and point of size ``n`` (see the module docstring for the ranges and why).

    Args:
        n: number of variables, at least 1.
        seed: seed of the NumPy generator.

    Returns:
        A ``Problem`` with ``x: (n,)``, ``b: (n,)``, ``A: (n, n)`` float64 and ``rt`` a float.
    """
    if n < 1:
        raise ValueError(f"the Helmholtz problem needs n >= 1 variables, got n={n}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 1.5, n)
    b = rng.uniform(0.1, 0.5, n) / n
    m = rng.uniform(0.0, 1.0, (n, n)) / n
    return Problem(x, b, (m + m.T) / 2, RT)


def helmholtz(x, b, A, rt):
    """The Helmholtz free energy f(x) of the module docstring.

    Args:
        x: (n,) float, positive.
        b: (n,) float, with 0 < b.x < 1.
        A: (n, n) float, symmetric.
        rt: scalar float.

    Returns:
        () float.
    """
    bx = b @ x
    entropy = rt * jnp.sum(x * jnp.log(x / (1 - bx)))
    attraction = (x @ A @ x) / (math.sqrt(8.0) * bx)
    return entropy - attraction * jnp.log((1 + (1 + _SQRT2) * bx) / (1 + (1 - _SQRT2) * bx))


def helmholtz_gradient(x, b, A, rt):
    """The gradient of ``helmholtz``, derived by hand.

    With ``s = b.x``, ``q = x'Ax``, ``L = log((1 + (1 + sqrt 2) s) / (1 + (1 - sqrt 2) s))`` and therefore
    ``dL/ds = 2 sqrt(2) / (1 + 2s - s^2)`` (the product of the two linear factors is ``1 + 2s - s^2``)::

        grad f = RT (log(x / (1 - s)) + 1 + (sum_i x_i / (1 - s)) b)
                 - (L / (sqrt(2) s)) A x
                 - q (1 / (s (1 + 2s - s^2)) - L / (sqrt(8) s^2)) b

    The first line is the entropy term (its ``1 - s`` depends on every x_i through s); the second is
    ``d(x'Ax) = 2Ax`` (A symmetric) times ``L / (sqrt(8) s)``; the third is the derivative of ``L / s`` through s,
    where ``q dL/ds / (sqrt(8) s) = q / (s (1 + 2s - s^2))`` because ``2 sqrt(2) / sqrt(8) = 1``.

    Args:
        x: (n,) float, positive.
        b: (n,) float, with 0 < b.x < 1.
        A: (n, n) float, symmetric (for a non-symmetric A the second line needs ``(A + A') x / 2``).
        rt: scalar float.

    Returns:
        (n,) float.
    """
    s = b @ x
    ax = A @ x
    q = x @ ax
    log_ratio = jnp.log((1 + (1 + _SQRT2) * s) / (1 + (1 - _SQRT2) * s))
    entropy = rt * (jnp.log(x / (1 - s)) + 1 + (jnp.sum(x) / (1 - s)) * b)
    through_s = q * (1 / (s * (1 + 2 * s - s * s)) - log_ratio / (math.sqrt(8.0) * s * s))
    return entropy - (log_ratio / (_SQRT2 * s)) * ax - through_s * b


def reverse_gradient(x, b, A, rt):
    """Reverse-mode AD: one forward pass and one backward pass, whatever n. Shapes as ``helmholtz_gradient``."""
    return jax.grad(helmholtz)(x, b, A, rt)


def forward_gradient(x, b, A, rt):
    """Forward-mode AD: n Jacobian-vector products, one per basis vector (vmapped by ``jax.jacfwd``)."""
    return jax.jacfwd(helmholtz)(x, b, A, rt)


def finite_difference_gradient(x, b, A, rt):
    """Central finite differences, 2n evaluations of f vmapped over the coordinates.

    The step ``h_i = eps^(1/3) max(1, |x_i|)`` balances the O(h^2) truncation error against the O(eps / h)
    round-off; dividing by the step actually taken, ``(x_i + h_i) - x_i``, removes the error of representing
    ``x_i + h_i`` in floating point.
    """
    h = jnp.finfo(x.dtype).eps ** (1 / 3) * jnp.maximum(1.0, jnp.abs(x))
    h = (x + h) - x
    steps = jnp.diag(h)
    f = jax.vmap(lambda step: helmholtz(x + step, b, A, rt))
    return (f(steps) - f(-steps)) / (2 * h)


JAX_METHODS = MappingProxyType(
    {
        "reverse": reverse_gradient,
        "forward": forward_gradient,
        "finite_difference": finite_difference_gradient,
        "manual": helmholtz_gradient,
    }
)


class Symbolic(NamedTuple):
    """SymPy's gradient of f for one problem, lambdified to NumPy.

    Attributes:
        gradient: ``gradient(*x) -> list`` of n floats, for x given as n floats.
        loss: ``loss(*x) -> float``, f lambdified the same way (a like-for-like denominator).
        setup_s: seconds to build f, differentiate it by every variable and lambdify the gradient.
        ops: ``sympy.count_ops`` summed over the n gradient entries.
        ops_cse: the same after common-subexpression elimination (``sympy.cse``): the shared subexpressions
            counted once, plus the reduced entries.
    """

    gradient: Callable
    loss: Callable
    setup_s: float
    ops: int
    ops_cse: int


def sympy_version() -> str | None:
    """'sympy X.Y' when SymPy can be imported, else None (it is an optional extra)."""
    try:
        sympy = importlib.import_module("sympy")
    except ImportError:
        return None
    return f"sympy {sympy.__version__}"


def symbolic_gradient(b: np.ndarray, A: np.ndarray, rt: float) -> Symbolic:
    """Differentiate f symbolically in n variables, the constants as numbers, and lambdify the gradient.

    Args:
        b: (n,) float.
        A: (n, n) float, symmetric.
        rt: scalar float.

    Returns:
        A ``Symbolic``. Raises ImportError when SymPy is not installed.
    """
    import sympy

    n = b.shape[0]
    tick = time.perf_counter()
    xs = sympy.symbols(f"x0:{n}")
    s = sympy.Add(*(sympy.Float(b[i]) * xs[i] for i in range(n)))
    # x'Ax with A symmetric: the i < j terms twice, as SymPy would collect them anyway
    q = sympy.Add(
        *(sympy.Float(A[i, i] if i == j else 2 * A[i, j]) * xs[i] * xs[j] for i in range(n) for j in range(i, n))
    )
    root2 = sympy.sqrt(2)
    f = sympy.Float(rt) * sympy.Add(*(xi * sympy.log(xi / (1 - s)) for xi in xs)) - q / (sympy.sqrt(8) * s) * sympy.log(
        (1 + (1 + root2) * s) / (1 + (1 - root2) * s)
    )
    entries = [sympy.diff(f, xi) for xi in xs]
    gradient = sympy.lambdify(xs, entries, modules="numpy")
    setup_s = time.perf_counter() - tick
    replacements, reduced = sympy.cse(entries)
    ops_cse = sum(sympy.count_ops(e) for _, e in replacements) + sum(sympy.count_ops(e) for e in reduced)
    return Symbolic(
        gradient,
        sympy.lambdify(xs, f, modules="numpy"),
        setup_s,
        int(sum(sympy.count_ops(e) for e in entries)),
        int(ops_cse),
    )


def relative_error(value, reference) -> float:
    """||value - reference|| / ||reference|| (2-norms) of two (n,) gradients."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def _jax_row(n: int, instance: Problem, repeats: int) -> tuple[dict, np.ndarray]:
    """Times and gradients of f and the four JAX methods at one size; (row, reverse-mode gradient)."""
    row: dict = {"size": n, "num_params": n}
    with _FLOAT64.scope():
        args = (
            jnp.asarray(instance.x),
            jnp.asarray(instance.b),
            jnp.asarray(instance.A),
            jnp.asarray(instance.rt, jnp.float64),
        )
        programs = compile_side_by_side([helmholtz, *JAX_METHODS.values()], *args)
        loss, methods = programs[0], dict(zip(JAX_METHODS, programs[1:]))
        gradients = {name: np.asarray(program(*args)) for name, program in methods.items()}
        # f is the denominator of every ratio, and f, reverse and manual are the fastest calls: time them twice
        # as often as the methods whose cost grows with n
        record(row, "loss_s", measure(loss, *args, repeats=2 * repeats))
        for name, program in methods.items():
            cheap = name in ("reverse", "manual")
            record(row, f"{name}_s", measure(program, *args, repeats=2 * repeats if cheap else repeats))
    reference = gradients["reverse"]
    row["errors"] = {name: relative_error(g, reference) for name, g in gradients.items() if name != "reverse"}
    return row, reference


_SYMBOLIC_KEYS = (
    "symbolic_s",
    "symbolic_setup_s",
    "symbolic_ops",
    "symbolic_ops_cse",
    "symbolic_loss_s",
    "symbolic_own_ratio",
)


def _symbolic_fields(row: dict, instance: Problem, reference: np.ndarray, repeats: int) -> None:
    """Add the symbolic method's figures to ``row``: evaluation time of the lambdified gradient, the one-off
    set-up, expression sizes, its error, and its time against the lambdified f (NumPy against NumPy)."""
    symbolic = symbolic_gradient(instance.b, instance.A, instance.rt)
    point = instance.x.tolist()  # n Python floats: the lambdified functions take one argument per variable
    row["errors"]["symbolic"] = relative_error(symbolic.gradient(*point), reference)
    record(row, "symbolic_s", measure(symbolic.gradient, *point, repeats=repeats))
    record(row, "symbolic_loss_s", measure(symbolic.loss, *point, repeats=repeats))
    row.update(
        symbolic_setup_s=symbolic.setup_s,
        symbolic_ops=symbolic.ops,
        symbolic_ops_cse=symbolic.ops_cse,
        symbolic_own_ratio=row["symbolic_s"] / row["symbolic_loss_s"],
        symbolic_skipped=None,
    )


def growth_exponents(rows: list, fitted_sizes: list) -> dict:
    """For each method, the slope of log(time / f time) against log(n) over the rows whose n is in
    ``fitted_sizes`` (``gradfit.bench.timing.growth_fit``: f's time well above the dispatch floor) and where the
    method was timed; None when fewer than 2 such rows."""
    return {
        m: growth_exponent(
            [
                (r["num_params"], r["ratios"][m])
                for r in rows
                if r["num_params"] in fitted_sizes and r["ratios"].get(m) is not None
            ]
        )
        for m in METHODS
    }


def study(
    sizes: tuple = FULL["sizes"],
    repeats: int = 5,
    symbolic_max_n: int = FULL["symbolic_max_n"],
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    symbolic_budget_s: float = SYMBOLIC_BUDGET_S,
) -> dict:
    """Full-gradient time of each method as a multiple of one evaluation of f, for each number of variables.

    Every JAX program is compiled once per size before it is timed, with the arrays as arguments; times are
    medians after a warm-up (``gradfit.bench.timing``). Symbolic differentiation runs for ``n <= symbolic_max_n`` and
    stops growing once one size's set-up takes more than ``symbolic_budget_s`` (its cost grows about as n^3);
    rows it skips carry None and the reason in ``symbolic_skipped``. Growth exponents are fitted only over the
    sizes where f takes at least ``COMPUTE_BOUND_FACTOR`` times the dispatch floor (``growth_fit``); with fewer
    than 2 such sizes they are None, and ``growth_fit["reason"]`` says why.

    Args:
        sizes: numbers of variables n, increasing.
        repeats: samples per timing (f, reverse and manual take twice as many).
        symbolic_max_n: largest n for symbolic differentiation.
        seed: seed of the constants (``problem``).
        progress: called with a short message before each size.
        symbolic_budget_s: set-up seconds after which symbolic differentiation is not tried at larger n.

    Returns:
        ``{"function", "rows", "growth_exponent", "growth_fit", "expression_growth", "symbolic", "note"}``;
        each row has ``size``, ``num_params``, ``loss_s``, ``{method}_s``, ``symbolic_setup_s``, ``symbolic_ops``,
        ``symbolic_ops_cse``, ``symbolic_loss_s``, ``symbolic_own_ratio`` (symbolic_s / symbolic_loss_s),
        ``symbolic_skipped`` (None, or why symbolic did not run), ``ratios`` (method -> time / loss_s, None where
        not run), ``errors`` (method -> norm-relative error against reverse mode, None where not run), ``spread``
        and ``unstable`` (see ``gradfit.bench.timing.record``).
    """
    version = sympy_version()
    rows, stopped = [], None if version else SYMPY_HINT
    floor_s = dispatch_floor(2 * repeats)
    for n in sizes:
        progress(f"Helmholtz free energy, n={n}")
        instance = problem(n, seed)
        row, reference = _jax_row(n, instance, repeats)
        row.update(dict.fromkeys(_SYMBOLIC_KEYS), symbolic_skipped=stopped)
        if stopped is None and n > symbolic_max_n:
            row["symbolic_skipped"] = f"n > symbolic_max_n = {symbolic_max_n}"
        elif stopped is None:
            _symbolic_fields(row, instance, reference, repeats)
            if row["symbolic_setup_s"] > symbolic_budget_s:
                stopped = (
                    f"not tried beyond n={n}: its set-up took {row['symbolic_setup_s']:.1f} s (budget "
                    f"{symbolic_budget_s:g} s), and that cost grows about as n^3"
                )
        row.setdefault("errors", {}).setdefault("symbolic", None)
        row["ratios"] = {m: None if row[f"{m}_s"] is None else row[f"{m}_s"] / row["loss_s"] for m in METHODS}
        rows.append(row)
    fit = growth_fit(rows, "loss_s", floor_s)
    return {
        "function": "helmholtz",
        "rows": rows,
        "growth_exponent": growth_exponents(rows, fit["sizes"]),
        "growth_fit": fit,
        "expression_growth": _expression_growth(rows),
        "symbolic": version or SYMPY_HINT,
        "note": NOTE,
    }


def _expression_growth(rows: list) -> dict:
    """The slope of log(operation count) of the symbolic gradient against log(n), before and after CSE."""
    return {
        key: growth_exponent(
            [
                (r["num_params"], r[f"symbolic_{key}"])
                for r in rows
                if r["num_params"] >= 2 and r[f"symbolic_{key}"] is not None
            ]
        )
        for key in ("ops", "ops_cse")
    }


NOTE = (
    "float64; ratios are a method's full-gradient time over one evaluation of f (compiled with jax.jit; "
    "symbolic: SymPy's gradient lambdified to NumPy, so its ratio also holds Python's interpreter against XLA, "
    "and symbolic_own_ratio compares it with f lambdified the same way); growth exponents are slopes of "
    "log(ratio) against log(n) over growth_fit's sizes only, those where f takes at least growth_fit's factor "
    "times the dispatch floor (a compiled call that does next to nothing): below, every call costs about that "
    "fixed overhead and a slope is not a growth rate, so with fewer than 2 such sizes there is none; "
    "expression_growth is the slope of log(operation count) against log(n) over n >= 2; errors are "
    "norm-relative against reverse mode"
)
