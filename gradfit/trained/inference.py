"""Statistical inference for a fitted logistic regression: the coefficient table statisticians expect.

The covariance of the estimates is the inverse Hessian of the total negative log-likelihood at the fitted
parameters (plus the L2 term when the fit was penalized), from ``jax.hessian`` in float64, summed over row chunks.
Before any number is shown, the data and the fit are checked:

- separation, from the data alone (a linear program, as in Konis 2007 and R's detectseparation): when a
  hyperplane classifies every row correctly (complete) or every row correctly or on it (quasi-complete), the
  maximum-likelihood estimates do not exist, whatever the optimizer printed;
- features constant in the training split, which have no coefficient;
- a singular or ill-conditioned Hessian, measured after scaling it to unit diagonal so feature units do not count;
- convergence: how many standard errors one Newton step would move the estimates.

Prints nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.errors import GradfitError
from gradfit.trained.linear import linear_inference
from gradfit.trained.multinomial import multinomial_inference
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

#: the separation check (a linear program over the rows) is skipped above this many rows x coefficients
SEPARATION_CHECK_LIMIT = 5_000_000
_CHUNK_ROWS = 1 << 15


def logistic_inference(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: float,
    l2: float,
    feature_names: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: str = "original",
    level: float = 0.95,
) -> Inference:
    """Coefficient table of a binary logistic regression fitted on (x, y).

    Args:
        x: (n, d) the features as the model saw them (standardized when mean/std are given).
        y: (n,) labels in {-1, +1}.
        w, b: fitted weights (d,) and intercept.
        l2: the penalty (l2/2)||w||^2 added to the mean loss in training (0: maximum likelihood).
        mean, std: (d,) the standardization applied to the raw features, or None.
        scale: "original" reports per unit of the raw features (delta method through the standardization);
            "standardized" per standard deviation.
    """
    x, y = np.asarray(x), np.asarray(y, np.float64)
    n = len(y)
    w = np.asarray(w, np.float64)
    names = list(feature_names)
    problems: list[str] = []
    notes: list[str] = []

    constant, keep = constant_columns(x, names, notes)
    x, w, kept_names = x[:, keep], w[keep], [names[i] for i in keep]
    d = len(keep)
    theta = np.append(w, float(b))
    coef_names = ["(intercept)"] + kept_names  # the table's order; theta keeps the intercept last

    separation = detect_separation(x, y) if n * (d + 1) <= SEPARATION_CHECK_LIMIT else "not checked"
    nll, grad, hessian, unpenalized_hessian = _derivatives(x, y, theta, l2)
    unit, eigenvalues, eigenvectors, condition = conditioning(hessian)

    no_estimates = l2 == 0 and separation in ("complete", "quasi-complete")
    _explain_separation(separation, l2, n, d, theta, problems, notes)
    if condition > ILL_CONDITIONED and not no_estimates:
        explain_conditioning(condition, eigenvectors[:, 0], kept_names + ["(intercept)"], problems, notes)
    withheld = bool(problems)

    covariance, offset = None, None
    if not withheld:
        covariance, offset = covariance_and_offset(unit, eigenvalues, eigenvectors, grad, problems)
    effective = _effective_parameters(d, l2, n, hessian, unpenalized_hessian, notes)

    estimates = theta
    if mean is not None and std is not None and scale == "original":
        estimates, covariance = _to_original_scale(
            theta, covariance, np.asarray(mean, np.float64)[keep], np.asarray(std, np.float64)[keep]
        )

    order = np.r_[d, np.arange(d)]  # intercept first
    log_likelihood = None if no_estimates else -nll
    return Inference(
        scale=scale,
        standardized_features=mean is not None,
        level=level,
        coefficients=coefficient_rows(
            coef_names,
            None if no_estimates else estimates[order],
            None if covariance is None else covariance[np.ix_(order, order)],
            level,
        ),
        n_obs=n,
        log_likelihood=log_likelihood,
        effective_parameters=effective,
        aic=None if log_likelihood is None else 2 * effective - 2 * log_likelihood,
        bic=None if log_likelihood is None else effective * math.log(n) - 2 * log_likelihood,
        l2=l2,
        gradient_norm=float(np.linalg.norm(grad) / n),
        newton_offset=offset,
        condition_number=condition,
        separation=separation,
        constant_features=[names[i] for i in constant],
        withheld=withheld,
        problems=problems,
        notes=notes,
    )


def _effective_parameters(
    d: int, l2: float, n: int, hessian: np.ndarray, unpenalized_hessian: np.ndarray, notes: list[str]
) -> float:
    """d + 1 for maximum likelihood; tr(H (H + penalty)^-1) for a penalized fit, with a note on what it means."""
    if l2 <= 0:
        return float(d + 1)
    effective = float(np.trace(np.linalg.solve(hessian, unpenalized_hessian)))
    notes.append(
        f"penalized fit (model.l2 = {l2:g}): the estimates maximize the penalized likelihood and the "
        f"standard errors come from the inverse penalized Hessian (n*l2 = {n * l2:.4g} added for each "
        "weight, not the intercept), the Bayesian-style variance; Wald tests on shrunk estimates are "
        f"approximate. AIC and BIC use the unpenalized log-likelihood and the {effective:.4g} effective "
        "parameters tr(H (H + penalty)^-1)"
    )
    return effective


def _explain_separation(
    separation: str | None, l2: float, n: int, d: int, theta: np.ndarray, problems: list[str], notes: list[str]
) -> None:
    if separation in ("complete", "quasi-complete") and l2 == 0:
        problems.append(
            f"{separation} separation: a hyperplane classifies every training row correctly"
            f"{'' if separation == 'complete' else ' or lies on it'}, so the maximum-likelihood estimates do not "
            f"exist (they grow without bound as training goes on; |theta| is now {np.linalg.norm(theta):.3g}). "
            "Estimates, standard errors, z, p-values, intervals, log-likelihood, AIC and BIC are withheld. Fit with "
            "model.l2 > 0 for penalized estimates, or drop the separating features"
        )
    elif separation in ("complete", "quasi-complete"):
        notes.append(
            f"the training rows show {separation} separation: without the L2 penalty the estimates would "
            "not exist, and these depend on the penalty's size"
        )
    elif separation == "not checked":
        notes.append(
            f"separation was not checked ({n:,} rows x {d + 1} coefficients is above the linear program's "
            "limit); a diverging fit would show as not converged or as a singular Hessian"
        )


def _to_original_scale(
    theta: np.ndarray, covariance: np.ndarray | None, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Standardized-scale (w, b) and covariance -> raw-feature units.

    logit = sum_j w_j (x_j - m_j) / s_j + b is linear in theta, so the delta method is exact.
    """
    jacobian = unscaling(mean, std)
    return jacobian @ theta, None if covariance is None else jacobian @ covariance @ jacobian.T


def run_inference(run, scale: str = "original", level: float = 0.95) -> Inference:
    """The coefficient table of a trained run (a ``gradfit.trained.run.TrainedRun``), on its re-created training split.

    Raises:
        GradfitError: the run is not a logistic or least-squares linear regression, or its training data changed
            since.
    """
    from gradfit.data.dataset import Split
    from gradfit.data.streamed import StreamedSplit
    from gradfit.trained.run import reload_dataset

    model = run.config.model
    if model.kind == "mlp":
        raise GradfitError(
            f"{run.run_dir}: inference applies to logistic and linear regression, and this run is an MLP "
            "(model.kind: mlp): its weights have no coefficient interpretation. Use gradfit eval "
            "for its metrics"
        )
    if run.preprocessing.get("weight") is not None or run.preprocessing.get("class_weight") is not None:
        raise GradfitError(
            f"{run.run_dir}: the run weighs its rows (data.weight or model.class_weight); gradfit's coefficient "
            "tables assume one observation per row and give none for weighted fits"
        )
    if model.l1 > 0:
        raise GradfitError(
            f"{run.run_dir}: the run has an L1 penalty (model.l1 = {model.l1:g}); Wald tables of lasso and elastic-net "
            "estimates are not valid (the zeros are chosen by the data), so none is given. Refit the kept features "
            "with model.l1: 0 for a table, and say that they were selected"
        )
    if model.kind == "linear" and model.resolved_loss != "squared":
        raise GradfitError(
            f"{run.run_dir}: the coefficient table is of least squares (model.loss: squared); this run minimized "
            f"the {model.resolved_loss} loss, whose standard errors would need a robust sandwich that gradfit does "
            "not compute. Use gradfit eval for its metrics"
        )
    train = reload_dataset(run).train
    # the Hessian needs every training row: a streamed split is read whole here
    if isinstance(train, StreamedSplit):
        x, y = train.take(np.arange(len(train)), np.float64, np.float64)
    else:
        assert isinstance(train, Split)
        x, y = train.x, train.y
    scaling = run.preprocessing["standardize"] or {}
    if model.kind == "linear":
        return linear_inference(
            x,
            y,
            np.asarray(run.params["w"]),
            float(run.params["b"]),
            model.l2,
            run.feature_names,
            scaling.get("mean"),
            scaling.get("std"),
            target_mean=run.target_scale[0],
            target_std=run.target_scale[1],
            scale=scale,
            level=level,
        )
    if np.ndim(run.params["w"]) == 2:
        return multinomial_inference(
            x,
            y,
            np.asarray(run.params["w"]),
            np.asarray(run.params["b"]),
            run.config.model.l2,
            run.feature_names,
            run.classes,
            scaling.get("mean"),
            scaling.get("std"),
            scale,
            level,
        )
    return logistic_inference(
        x,
        y,
        np.asarray(run.params["w"]),
        float(run.params["b"]),
        run.config.model.l2,
        run.feature_names,
        scaling.get("mean"),
        scaling.get("std"),
        scale,
        level,
    )


def detect_separation(x: np.ndarray, y: np.ndarray) -> str | None:
    """'complete', 'quasi-complete' or None, from the data alone: two small linear programs (scipy's HiGHS).

    Complete: some theta gives every row a positive margin y_i (x_i . w + b). Quasi-complete: some theta gives
    every row a margin >= 0 and at least one a positive one. Either way the likelihood has no maximum.
    """
    from scipy.optimize import linprog

    margins = y[:, None] * np.c_[np.asarray(x, np.float64), np.ones(len(y))]  # (n, d + 1): row i's margin per theta
    n, k = margins.shape
    box = [(-1.0, 1.0)] * k  # theta is only a direction: bound it
    options = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    # complete: maximize t subject to margins @ theta >= t, 0 <= t <= 1
    complete = linprog(
        np.r_[np.zeros(k), -1.0],
        A_ub=np.c_[-margins, np.ones(n)],
        b_ub=np.zeros(n),
        bounds=box + [(0.0, 1.0)],
        method="highs",
        options=options,
    )
    if complete.status == 0 and -complete.fun > 1e-7:
        return "complete"
    # quasi-complete: maximize the total margin subject to every margin >= 0
    quasi = linprog(-margins.sum(axis=0), A_ub=-margins, b_ub=np.zeros(n), bounds=box, method="highs", options=options)
    if quasi.status == 0 and -quasi.fun > 1e-7 * max(n, 1):
        return "quasi-complete"
    return None


def _derivatives(x: np.ndarray, y: np.ndarray, theta: np.ndarray, l2: float):
    """(total negative log-likelihood, gradient and Hessian of the total penalized objective, Hessian of the
    likelihood alone), in float64, summed over row chunks so memory stays bounded for large data."""
    n, d = x.shape
    penalty = np.diag(np.r_[np.full(d, n * l2), 0.0])  # objective = n * (mean loss + (l2/2)||w||^2)
    with jax.enable_x64(True):
        point = jnp.asarray(theta, jnp.float64)
        total, grad, hess = 0.0, np.zeros(d + 1), np.zeros((d + 1, d + 1))
        for start in range(0, n, _CHUNK_ROWS):
            xc, yc = x[start : start + _CHUNK_ROWS], y[start : start + _CHUNK_ROWS]
            pad = _CHUNK_ROWS - len(yc) if n > _CHUNK_ROWS else 0  # one compiled shape for large data
            weight = np.r_[np.ones(len(yc)), np.zeros(pad)]
            xc = np.concatenate([np.asarray(xc, np.float64), np.zeros((pad, d))])
            yc = np.r_[yc, np.zeros(pad)]
            value, g, h = _chunk_derivatives(point, xc, yc, weight)
            total, grad, hess = total + float(value), grad + np.asarray(g), hess + np.asarray(h)
    return total, grad + penalty @ np.asarray(point), hess + penalty, hess


@jax.jit
def _chunk_derivatives(theta, x, y, weight):
    """Negative log-likelihood of one chunk and its gradient and Hessian; ``weight`` 0 marks padding rows.

    Defined once, so each data shape compiles once per process (not once per call).
    """
    d = x.shape[1]

    def nll(theta):
        return jnp.sum(weight * jnp.logaddexp(0.0, -y * (x @ theta[:d] + theta[d])))

    return nll(theta), jax.grad(nll)(theta), jax.hessian(nll)(theta)
