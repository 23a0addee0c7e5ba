"""The methods that should agree with reverse AD to rounding: forward mode, the hand-derived gradient, and (in a
check of float32 or bfloat16) reverse AD in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from gradfit.errors import GradfitError
from gradfit.gradients.check_report import FAIL, PASS, MethodResult, method_result
from gradfit.gradients.checked_point import CheckedPoint, Group, index_label

EXACT_TOLERANCE = 1e3  # exact methods (forward, manual) may differ from reverse by this many eps (relative)


def exact_verdicts(values: np.ndarray, reference: np.ndarray, eps: float, f0: float) -> tuple[np.ndarray, np.ndarray]:
    """(PASS or FAIL per entry, error over tolerance): ``values`` against ``reference`` within ``EXACT_TOLERANCE``
    roundings of ``eps`` at the size of the terms (``f0``: the loss)."""
    # rounding scales with the size of the summed terms, not with a gradient that is ~0 at an optimum: |f| floors it
    tolerance = EXACT_TOLERANCE * eps * (np.abs(reference) + np.max(np.abs(reference), initial=0.0) + abs(f0) + 1e-300)
    ratio = np.abs(values - reference) / tolerance
    return np.where(ratio <= 1, PASS, FAIL), ratio


def against_float64(point: CheckedPoint, group: Group) -> MethodResult:
    """Reverse AD in float64 against the checked precision's, on every entry, within that precision's rounding."""
    index = np.arange(group.offset, group.offset + group.size)
    reference = point.reverse[index]
    verdicts, ratio = exact_verdicts(point.reverse64[index], reference, point.eps, point.f0_checked)
    return method_result(
        "float64",
        point.reverse64[index],
        reference,
        verdicts,
        [index_label(group, i) for i in range(group.size)],
        ratio,
        np.arange(group.size),
    )


def forward_mode_available(point: CheckedPoint) -> bool:
    """Whether JAX can take the loss's forward-mode derivative (a custom_vjp function has no forward rule)."""
    exact = point.exact
    try:  # traced, not compiled: the answer is in the rules, and a compile costs a tenth of a second
        with exact.precision.scope():
            jax.eval_shape(exact.jvp_at, np.zeros(1, np.int32), exact.theta, *exact.args)
        return True
    except TypeError:  # e.g. jax.custom_vjp functions have no forward-mode rule
        return False


def flat_manual_gradient(point: CheckedPoint, manual_grad: Callable) -> np.ndarray:
    """``manual_grad`` at the point (as NumPy arrays), flattened as theta is, in float64.

    Raises:
        GradfitError: its result does not have the structure and shapes of the params.
    """
    at = point.unravel(point.theta)
    grad = manual_grad(jax.tree_util.tree_map(np.asarray, at))
    leaves, point_leaves = jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(at)
    structure = jax.tree_util.tree_structure(grad)
    # jax's stub declares PyTreeDef without its comparisons
    same_structure = structure == jax.tree_util.tree_structure(at)  # type: ignore[operator]
    if not same_structure or any(np.shape(g) != np.shape(p) for g, p in zip(leaves, point_leaves)):
        raise GradfitError("the hand-derived gradient does not have the structure and shapes of the params")
    return np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in leaves]) if leaves else np.zeros(0)
