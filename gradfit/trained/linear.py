"""The coefficient table of a linear regression fitted with the squared loss, as statsmodels' ``OLS`` gives it.

gradfit fits ``w`` and ``b`` on the features as the model saw them (standardized when the run standardizes) and on
the standardized target y' = (y - target_mean) / target_std, minimizing mean((y' - x w - b)^2) / 2 + (l2/2)||w||^2
(the intercept is not penalized). The fitted model is y_hat = target_mean + target_std * (x w + b), so the table
reports target_std * [w, b], with target_mean added to the intercept, in the target's units; on the original scale
through the standardization as well (a linear map: the delta method is exact).

- Least squares (``l2: 0``): the covariance is sigma^2 (X'X)^-1 with X = [x, 1] and sigma^2 = SSE / (n - p), p the
  number of coefficients, the intercept included. The tests compare with ``OLS``.
- Ridge (``l2 > 0``): the covariance of the penalized estimator for a fixed penalty, the sandwich
  sigma^2 (X'X + P)^-1 X'X (X'X + P)^-1 with P = n*l2 on the weights, sigma^2 = SSE / (n - df) and df =
  tr(X (X'X + P)^-1 X') the effective parameters.

``Coefficient.z`` holds the t statistic (estimate / standard error): p-values and intervals come from Student's t
with n - p (or n - df) degrees of freedom, not the normal. The log-likelihood is the Gaussian one at
sigma^2 = SSE / n, and AIC and BIC count p (or df) parameters, not sigma^2, as statsmodels does. Prints nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from gradfit.trained.wald import (
    CONVERGED_OFFSET,
    ILL_CONDITIONED,
    Coefficient,
    Inference,
    coefficient_rows,
    conditioning,
    constant_columns,
    explain_conditioning,
    unscaling,
)


def linear_inference(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    b: float,
    l2: float,
    feature_names: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    target_mean: float = 0.0,
    target_std: float = 1.0,
    scale: str = "original",
    level: float = 0.95,
) -> Inference:
    """Coefficient table of a least-squares (l2 = 0) or ridge linear regression fitted on (x, y).

    Args:
        x: (n, d) the features as the model saw them (standardized when mean/std are given).
        y: (n,) the target as the model saw it: (y - target_mean) / target_std.
        w, b: fitted weights (d,) and intercept, in those standardized units.
        l2: the penalty (l2/2)||w||^2 added to the mean loss in training (0: ordinary least squares).
        mean, std: (d,) the standardization applied to the raw features, or None.
        target_mean, target_std: the standardization applied to the target; the table is in the target's units.
        scale: "original" reports per unit of the raw features (through the standardization); "standardized" per
            standard deviation of the features (still in the target's units).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(y)
    w = np.asarray(w, np.float64)
    names = list(feature_names)
    problems: list[str] = []
    notes: list[str] = []

    constant, keep = constant_columns(x, names, notes)
    x, w, kept_names = x[:, keep], w[keep], [names[i] for i in keep]
    d = len(keep)
    theta = np.append(w, float(b))  # the intercept last, as in the Hessian; the table puts it first
    coef_names = ["(intercept)"] + kept_names

    residual = y - x @ w - theta[d]
    sse = float(residual @ residual)  # in standardized target units
    gram = _gram(x)
    penalty = np.diag(np.r_[np.full(d, n * l2), 0.0])  # objective = n * (mean loss + (l2/2)||w||^2)
    hessian = gram + penalty
    grad = penalty @ theta - np.r_[x.T @ residual, residual.sum()]
    unit, eigenvalues, eigenvectors, condition = conditioning(hessian)
    # the (pseudo-)inverse of the Hessian, from its unit-diagonal eigendecomposition so feature units do not count
    reciprocal = np.divide(1.0, eigenvalues, out=np.zeros_like(eigenvalues), where=eigenvalues > 0)
    inverse = unit[:, None] * ((eigenvectors * reciprocal) @ eigenvectors.T) * unit[None, :]

    if condition > ILL_CONDITIONED:
        explain_conditioning(condition, eigenvectors[:, 0], kept_names + ["(intercept)"], problems, notes)
    effective = float(d + 1) if l2 <= 0 else float(np.trace(inverse @ gram))
    dof = n - effective  # residual degrees of freedom
    if dof <= 0:
        problems.append(
            f"no residual degrees of freedom: {n} training rows for {effective:.4g} "
            f"{'effective parameters' if l2 > 0 else 'coefficients'}, so the residual variance cannot be estimated. "
            "Standard errors are withheld; train on more rows or with fewer features"
        )
    elif sse <= np.finfo(np.float64).eps ** 2 * float(y @ y):
        problems.append(
            "the model reproduces every training row exactly (residual sum of squares 0): standard errors would be "
            "0 and t infinite. Standard errors are withheld; check that the target is not among the features"
        )
    withheld = bool(problems)

    covariance, offset = None, None
    if not withheld:
        sandwich = inverse if l2 <= 0 else inverse @ gram @ inverse
        covariance = sse / dof * (sandwich + sandwich.T) / 2
        offset = _newton_offset(inverse @ grad, covariance, problems)
    if l2 > 0:
        notes.append(
            f"penalized fit (model.l2 = {l2:g}): the estimates minimize the penalized squared loss (n*l2 = "
            f"{n * l2:.4g} added for each weight, not the intercept) and are shrunk toward 0; their covariance is "
            "the sandwich sigma^2 (X'X + P)^-1 X'X (X'X + P)^-1 of the ridge estimator, conditional on the penalty, "
            f"with sigma^2 = SSE / (n - df) and df = tr(X (X'X + P)^-1 X') = {effective:.4g} effective parameters. "
            "It does not count the shrinkage bias, so t tests and intervals on shrunk estimates are approximate. "
            "AIC and BIC use the Gaussian log-likelihood at the penalized estimates and df in place of p"
        )

    estimates = target_std * theta
    if covariance is not None:
        covariance = target_std**2 * covariance
    if mean is not None and std is not None and scale == "original":
        jacobian = unscaling(np.asarray(mean, np.float64)[keep], np.asarray(std, np.float64)[keep])
        estimates = jacobian @ estimates
        covariance = None if covariance is None else jacobian @ covariance @ jacobian.T
    estimates[d] += target_mean  # a constant offset: no variance

    sst = float(np.sum((y - y.mean()) ** 2)) if n else 0.0
    if sst > 0 and dof > 0:
        r2 = 1 - sse / sst
        notes.append(f"R^2 = {r2:.4g}, adjusted R^2 = {1 - (1 - r2) * (n - 1) / dof:.4g} on the training rows")

    order = np.r_[d, np.arange(d)]  # intercept first
    sse_target = target_std**2 * sse
    log_likelihood = -n / 2 * (math.log(2 * math.pi * sse_target / n) + 1) if n and sse_target > 0 else None
    return Inference(
        scale=scale,
        standardized_features=mean is not None,
        level=level,
        coefficients=_t_rows(
            coef_names,
            estimates[order],
            None if covariance is None else covariance[np.ix_(order, order)],
            level,
            dof,
        ),
        n_obs=n,
        log_likelihood=log_likelihood,
        effective_parameters=effective,
        aic=None if log_likelihood is None else 2 * effective - 2 * log_likelihood,
        bic=None if log_likelihood is None else effective * math.log(n) - 2 * log_likelihood,
        l2=l2,
        gradient_norm=float(np.linalg.norm(grad) / n) if n else 0.0,
        newton_offset=offset,
        condition_number=condition,
        separation=None,
        constant_features=[names[i] for i in constant],
        withheld=withheld,
        problems=problems,
        notes=notes,
    )


def _gram(x: np.ndarray) -> np.ndarray:
    """X'X for X = [x, 1], without building X."""
    n, d = x.shape
    gram = np.empty((d + 1, d + 1))
    gram[:d, :d] = x.T @ x
    gram[:d, d] = gram[d, :d] = x.sum(axis=0)
    gram[d, d] = n
    return gram


def _newton_offset(step: np.ndarray, covariance: np.ndarray, problems: list[str]) -> float:
    """How many standard errors the Newton step moves the estimates (for least squares one step lands on the
    optimum); a problem when the fit has not converged. ``wald.covariance_and_offset`` measures the step against
    the inverse Hessian, which here is neither the OLS covariance (it lacks sigma^2) nor the ridge sandwich."""
    offset = float(np.max(np.abs(step) / np.sqrt(np.diag(covariance))))
    if offset > CONVERGED_OFFSET:
        problems.append(
            f"the fit has not converged: one Newton step would move the estimates by up to {offset:.3g}"
            " standard errors. Train to the optimum (optimizer.name=lbfgs with train.tol and "
            "runtime.precision=float64; early stopping keeps parameters that are not the optimum)"
        )
    return offset


def _t_rows(
    names: list[str], estimates: np.ndarray, covariance: np.ndarray | None, level: float, dof: float
) -> list[Coefficient]:
    """``wald.coefficient_rows`` with Student's t on ``dof`` degrees of freedom in place of the normal for the
    p-values and intervals; ``z`` holds t."""
    from scipy import stats

    quantile = float(stats.t.ppf(0.5 + level / 2, dof)) if dof > 0 else math.nan

    def with_t(row: Coefficient) -> Coefficient:
        if row.z is None or row.estimate is None or row.std_error is None:
            return row
        return dataclasses.replace(
            row,
            p_value=float(2 * stats.t.sf(abs(row.z), dof)),
            ci_low=row.estimate - quantile * row.std_error,
            ci_high=row.estimate + quantile * row.std_error,
        )

    return [with_t(row) for row in coefficient_rows(names, estimates, covariance, level)]
