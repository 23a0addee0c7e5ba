"""Statistical inference for a fitted logistic regression: the coefficient table statisticians expect.

The covariance of the estimates is the inverse Hessian of the total negative log-likelihood at the fitted
parameters (plus the L2 term when the fit was penalized), from ``jax.hessian`` in float64. Before any standard
error is shown, the fit is checked: complete separation (the estimates do not exist), a singular or
ill-conditioned Hessian (they are not identified, or barely), and whether the parameters are at the optimum (how
many standard errors one Newton step would move them). Prints nothing.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: above this condition number of the Hessian, the coefficients are not identified: standard errors are withheld
SINGULAR = 1e10
#: above this one, some combination of features is nearly collinear: standard errors are shown with a warning
ILL_CONDITIONED = 1e6
#: estimates this many standard errors or more from the optimum are reported as not converged
CONVERGED_OFFSET = 0.01


@dataclasses.dataclass(frozen=True)
class Coefficient:
    name: str
    estimate: Optional[float]  # None under complete separation: it only reflects when the optimizer stopped
    std_error: Optional[float]  # None when withheld
    z: Optional[float]
    p_value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]


@dataclasses.dataclass(frozen=True)
class Inference:
    scale: str  # "original" or "standardized" feature units
    level: float  # confidence level of the intervals
    coefficients: list[Coefficient]  # the intercept first
    n_obs: int
    log_likelihood: float  # unpenalized, at the fitted parameters
    aic: float
    bic: float
    l2: float
    gradient_norm: float  # of the training objective (mean loss + penalty), as gradfit train reports it
    newton_offset: Optional[float]  # max over coefficients of |Newton step| / standard error
    condition_number: float  # of the Hessian on the scale the model was fitted on
    separation: Optional[str]  # "complete" when the fitted model classifies every training row correctly
    withheld: bool  # standard errors not reported (separation or a singular Hessian)
    problems: list[str]  # what makes the table unreliable, with what to do
    notes: list[str]  # what the reader must know to read it right

    @property
    def converged(self) -> Optional[bool]:
        return None if self.newton_offset is None else self.newton_offset <= CONVERGED_OFFSET


def logistic_inference(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, l2: float,
                       feature_names: Sequence[str], mean: Optional[np.ndarray] = None,
                       std: Optional[np.ndarray] = None, scale: str = "original", level: float = 0.95) -> Inference:
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
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, d = x.shape
    theta = np.append(np.asarray(w, np.float64), float(b))
    nll, grad, hessian = _derivatives(x, y, theta, l2)
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    condition = float(eigenvalues.max() / eigenvalues.min()) if eigenvalues.min() > 0 else math.inf
    names = list(feature_names) + ["(intercept)"]
    margins = y * (x @ theta[:d] + theta[d])
    separation = "complete" if (margins > 0).all() else None
    problems, notes = [], []

    if separation and l2 == 0:
        problems.append(
            f"complete separation: the fitted model classifies all {n} training rows correctly, so the maximum-"
            f"likelihood estimates do not exist (they grow without bound as training goes on; |theta| is now "
            f"{np.linalg.norm(theta):.3g}). Estimates, standard errors, z, p-values and intervals are withheld. Fit with "
            "model.l2 > 0 for penalized estimates, or drop the separating features")
    elif separation:
        notes.append("the training rows are linearly separable: without the L2 penalty the estimates would not exist")
    if condition > ILL_CONDITIONED and not (separation and l2 == 0):
        direction = _describe_direction(eigenvectors[:, 0], names)
        if condition > SINGULAR:
            problems.append(
                f"the Hessian is singular or nearly so (condition number {condition:.3g}): the coefficients are not "
                f"identified along {direction}, from quasi-complete separation or collinear features. Standard "
                "errors are withheld; drop one of those features or fit with model.l2 > 0")
        else:
            notes.append(f"the Hessian is ill-conditioned (condition number {condition:.3g}): {direction} is nearly "
                         "collinear, so the standard errors of those coefficients are inflated")
    withheld = bool(problems)

    covariance = None if withheld else (eigenvectors / eigenvalues) @ eigenvectors.T
    offset = None
    if covariance is not None:
        newton_step = covariance @ grad
        offset = float(np.max(np.abs(newton_step) / np.sqrt(np.diag(covariance))))
        if offset > CONVERGED_OFFSET:
            problems.append(f"the fit has not converged: the estimates are up to {offset:.3g} standard errors from "
                            "the optimum. Train longer, e.g. optimizer.name=lbfgs with train.tol and "
                            "runtime.precision=float64")
    if l2 > 0:
        notes.append(f"penalized fit (model.l2 = {l2:g}): the estimates maximize the penalized likelihood and the "
                     f"standard errors come from the penalized Hessian (n*l2 = {n * l2:.4g} added for each weight, "
                     "not the intercept), so they are conditional on the penalty. AIC and BIC use the unpenalized "
                     f"log-likelihood and {d + 1} parameters")

    estimates = theta
    if mean is not None and std is not None and scale == "original":
        # logit = sum_j w_j (x_j - mu_j) / s_j + b: linear in theta, so the delta method is exact
        jacobian = np.zeros((d + 1, d + 1))
        jacobian[:d, :d] = np.diag(1 / np.asarray(std))
        jacobian[d, :d] = -np.asarray(mean) / np.asarray(std)
        jacobian[d, d] = 1.0
        estimates = jacobian @ theta
        covariance = None if covariance is None else jacobian @ covariance @ jacobian.T
    elif mean is None:
        notes.append("the features were not standardized: the original and standardized scales coincide")

    log_likelihood = -nll
    k = d + 1
    return Inference(
        scale=scale, level=level,
        coefficients=_table(names, None if separation and l2 == 0 else estimates, covariance, level),
        n_obs=n, log_likelihood=log_likelihood, aic=2 * k - 2 * log_likelihood, bic=k * math.log(n) - 2 * log_likelihood,
        l2=l2, gradient_norm=float(np.linalg.norm(grad) / n), newton_offset=offset, condition_number=condition,
        separation=separation, withheld=withheld, problems=problems, notes=notes,
    )


def _derivatives(x: np.ndarray, y: np.ndarray, theta: np.ndarray, l2: float):
    """(total negative log-likelihood, gradient and Hessian of the total penalized objective), in float64."""
    n, d = x.shape

    def nll(theta):
        return jnp.sum(jnp.logaddexp(0.0, -y * (x @ theta[:d] + theta[d])))

    def objective(theta):  # n times the training objective: the penalty scales with n like the likelihood
        return nll(theta) + 0.5 * n * l2 * jnp.sum(theta[:d] ** 2)

    with jax.enable_x64(True):
        theta = jnp.asarray(theta, jnp.float64)
        return (float(nll(theta)), np.asarray(jax.grad(objective)(theta)),
                np.asarray(jax.hessian(objective)(theta)))


def _table(names: list[str], estimates: Optional[np.ndarray], covariance: Optional[np.ndarray],
           level: float) -> list[Coefficient]:
    """Rows in statsmodels' order but the intercept first; z-based p-values and intervals."""
    quantile = NormalDist().inv_cdf(0.5 + level / 2)
    order = [len(names) - 1] + list(range(len(names) - 1))
    rows = []
    for i in order:
        estimate = None if estimates is None else float(estimates[i])
        if covariance is None or estimate is None:
            rows.append(Coefficient(names[i], estimate, None, None, None, None, None))
            continue
        se = float(math.sqrt(covariance[i, i]))
        z = estimate / se
        rows.append(Coefficient(names[i], estimate, se, z, math.erfc(abs(z) / math.sqrt(2)),
                                estimate - quantile * se, estimate + quantile * se))
    return rows


def _describe_direction(vector: np.ndarray, names: list[str], limit: int = 4) -> str:
    """The eigenvector of the smallest Hessian eigenvalue as '0.71*a - 0.70*b', its largest terms first."""
    largest = np.argsort(-np.abs(vector))[:limit]
    terms = [(vector[i], names[i]) for i in largest if abs(vector[i]) >= 0.1] or [(vector[largest[0]], names[largest[0]])]
    first, rest = terms[0], terms[1:]
    text = f"{first[0]:.2f}*{first[1]}" + "".join(f" {'-' if c < 0 else '+'} {abs(c):.2f}*{name}" for c, name in rest)
    return "the combination " + text
