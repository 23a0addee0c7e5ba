"""The coefficient table of a multinomial (softmax) logistic regression, as statsmodels' ``MNLogit`` gives it.

gradfit fits K coefficient vectors (every class its own, as scikit-learn does); only their differences are
identified by the data. The table reports, for each class k after the first, the log-odds of k against the
reference class (``classes[0]``, the first in sorted order, as ``MNLogit`` takes the lowest value): estimates
``w_k - w_0`` and ``b_k - b_0`` with their standard errors, z, p-values and intervals.

- Maximum likelihood (``l2: 0``): the covariance is the inverse Hessian of the total negative log-likelihood in
  those (K - 1)(d + 1) differences, which is ``MNLogit``'s parameterization (the tests compare with it).
- Penalized: the penalty acts on all K vectors, so the Hessian is taken in that space (the penalty makes it
  invertible) and carried to the differences by the delta method (exact: they are linear).

Separation is not checked for more than two classes; a fit that diverges shows as not converged or as a singular
Hessian. Prints nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.trained.wald import (
    ILL_CONDITIONED,
    Inference,
    coefficient_rows,
    conditioning,
    constant_columns,
    covariance_and_offset,
    explain_conditioning,
    unscaling,
)

_CHUNK_ROWS = 1 << 15


def multinomial_inference(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    l2: float,
    feature_names: Sequence[str],
    classes: Sequence,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: str = "original",
    level: float = 0.95,
) -> Inference:
    """Coefficient table of a softmax regression fitted on (x, y).

    Args:
        x: (n, d) the features as the model saw them (standardized when mean/std are given).
        y: (n,) class ids in [0, K).
        w, b: fitted weights (d, K) and intercepts (K,).
        l2: the penalty (l2/2)||W||^2 added to the mean loss in training (0: maximum likelihood).
        classes: the K class labels, in id order; the first is the reference.
        mean, std, scale, level: as for ``gradfit.trained.inference.logistic_inference``.
    """
    x, y = np.asarray(x), np.asarray(y, np.int64)
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    n, k = len(y), w.shape[1]
    problems: list[str] = []
    notes: list[str] = [
        "separation is not checked for more than two classes; a diverging fit would show as not converged or as a "
        "singular Hessian"
    ]
    names = list(feature_names)
    constant, keep = constant_columns(x, names, notes)
    x, w, kept_names = x[:, keep], w[keep], [names[i] for i in keep]
    d = len(keep)
    full = np.concatenate([np.r_[w[:, c], b[c] - b[0]] for c in range(k)])  # blocks [w_c, b_c - b_0]
    differences = _differences(k, d)  # full -> (K - 1) blocks of [w_c - w_0, b_c - b_0]
    reduced = differences @ full

    if l2 > 0:  # the Hessian where the penalty lives (all K weight vectors; the intercepts only differ), then
        # the delta method. b_0 is left out: a shift of every intercept changes no probability, nor the penalty
        nll, grad, hessian, unpenalized = _derivatives(x, y, np.delete(full, d), k, l2, reduced_space=False)
        differences = np.delete(differences, d, axis=1)
        space_names = [f"{classes[c]}: {t}" for c in range(k) for t in [*kept_names, "(intercept)"]]
        del space_names[d]
    else:
        nll, grad, hessian, unpenalized = _derivatives(x, y, reduced, k, 0.0, reduced_space=True)
        space_names = [f"{classes[c]} vs {classes[0]}: {t}" for c in range(1, k) for t in [*kept_names, "(intercept)"]]
    unit, eigenvalues, eigenvectors, condition = conditioning(hessian)
    if condition > ILL_CONDITIONED:
        explain_conditioning(condition, eigenvectors[:, 0], space_names, problems, notes)
    withheld = bool(problems)
    covariance, offset = None, None
    if not withheld:
        covariance, offset = covariance_and_offset(unit, eigenvalues, eigenvectors, grad, problems)
        if l2 > 0:
            covariance = differences @ covariance @ differences.T
    parameters = (k - 1) * (d + 1)
    if l2 > 0:
        parameters = float(np.trace(np.linalg.solve(hessian, unpenalized)))
        notes.append(
            f"penalized fit (model.l2 = {l2:g}) of all {k} classes' coefficients: the estimates are differences of "
            "penalized estimates and their standard errors come from the inverse penalized Hessian by the delta "
            f"method; Wald tests on shrunk estimates are approximate. AIC and BIC use the unpenalized "
            f"log-likelihood and the {parameters:.4g} effective parameters tr(H (H + penalty)^-1)"
        )

    estimates = reduced
    if mean is not None and std is not None and scale == "original":
        jacobian = np.kron(np.eye(k - 1), unscaling(np.asarray(mean, np.float64)[keep], np.asarray(std)[keep]))
        estimates = jacobian @ reduced
        covariance = None if covariance is None else jacobian @ covariance @ jacobian.T

    block = np.r_[d, np.arange(d)]  # the intercept first within each class's block
    order = np.concatenate([c * (d + 1) + block for c in range(k - 1)])
    row_names = [f"{classes[c]} vs {classes[0]}: {t}" for c in range(1, k) for t in ["(intercept)", *kept_names]]
    log_likelihood = -nll
    return Inference(
        scale=scale,
        standardized_features=mean is not None,
        level=level,
        coefficients=coefficient_rows(
            row_names, estimates[order], None if covariance is None else covariance[np.ix_(order, order)], level
        ),
        n_obs=n,
        log_likelihood=log_likelihood,
        effective_parameters=float(parameters),
        aic=2 * parameters - 2 * log_likelihood,
        bic=parameters * math.log(n) - 2 * log_likelihood,
        l2=l2,
        gradient_norm=float(np.linalg.norm(grad) / n),
        newton_offset=offset,
        condition_number=condition,
        separation="not checked",
        constant_features=[names[i] for i in constant],
        withheld=withheld,
        problems=problems,
        notes=notes,
    )


def _differences(k: int, d: int) -> np.ndarray:
    """The matrix taking K blocks [w_c, b_c] to the K - 1 blocks [w_c - w_0, b_c - b_0]."""
    blocks = np.zeros((k - 1, k))
    blocks[:, 0], blocks[:, 1:] = -1.0, np.eye(k - 1)
    return np.kron(blocks, np.eye(d + 1))


def _derivatives(x: np.ndarray, y: np.ndarray, theta: np.ndarray, k: int, l2: float, reduced_space: bool):
    """(total negative log-likelihood, gradient and Hessian of the total penalized objective, Hessian of the
    likelihood alone) in float64 at ``theta``: K blocks [w_c, b_c], or K - 1 difference blocks when
    ``reduced_space`` (the reference class's logit is 0); in the full space b_0 is left out of ``theta`` (it is 0).
    Summed over row chunks: memory bounded in the rows."""
    n, d = x.shape
    size = len(theta)
    weights = np.tile(np.r_[np.ones(d), 0.0], k - reduced_space)
    if not reduced_space:
        weights = np.delete(weights, d)  # b_0, fixed at 0
    penalty = np.diag(n * l2 * weights)  # objective = n * (mean loss + (l2/2)||W||^2)
    with jax.enable_x64(True):
        point = jnp.asarray(theta, jnp.float64)
        total, grad, hess = 0.0, np.zeros(size), np.zeros((size, size))
        for start in range(0, n, _CHUNK_ROWS):
            xc, yc = x[start : start + _CHUNK_ROWS], y[start : start + _CHUNK_ROWS]
            pad = _CHUNK_ROWS - len(yc) if n > _CHUNK_ROWS else 0
            mask = np.r_[np.ones(len(yc)), np.zeros(pad)]
            xc = np.concatenate([np.asarray(xc, np.float64), np.zeros((pad, d))])
            yc = np.r_[yc, np.zeros(pad, np.int64)]
            value, g, h = _chunk_derivatives(point, xc, yc, mask, k, reduced_space)
            total, grad, hess = total + float(value), grad + np.asarray(g), hess + np.asarray(h)
    return total, grad + penalty @ np.asarray(point), hess + penalty, hess


@functools.partial(jax.jit, static_argnums=(4, 5))
def _chunk_derivatives(theta, x, y, mask, k, reduced_space):
    """Negative log-likelihood of one chunk, its gradient and Hessian; ``mask`` 0 marks padding rows."""
    d = x.shape[1]

    def nll(theta):
        if not reduced_space:
            theta = jnp.insert(theta, d, 0.0)  # b_0 = 0
        blocks = theta.reshape(-1, d + 1)  # one row [w_c, b_c] per class (or per difference)
        logits = x @ blocks[:, :d].T + blocks[:, d]
        if reduced_space:
            logits = jnp.concatenate([jnp.zeros((len(x), 1)), logits], axis=1)
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.sum(mask * jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0])

    return nll(theta), jax.grad(nll)(theta), jax.hessian(nll)(theta)
