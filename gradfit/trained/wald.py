"""Wald tables of fitted coefficients, shared by the binary and the multinomial logistic regression: the result
types, the covariance from the inverse Hessian (with its conditioning and a convergence check), and the rows of
estimates, standard errors, z, p-values and intervals. Prints nothing.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

#: above this condition number (of the unit-diagonal Hessian) coefficients are not identified: SEs are withheld
SINGULAR = 1e10
#: above this one, some combination of features is nearly collinear: SEs are shown with a note
ILL_CONDITIONED = 1e6
#: estimates this many standard errors or more from the optimum are reported as not converged
CONVERGED_OFFSET = 0.01


@dataclasses.dataclass(frozen=True)
class Coefficient:
    name: str
    estimate: float | None  # None when the estimates do not exist (separation)
    std_error: float | None  # None when withheld
    z: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None


@dataclasses.dataclass(frozen=True)
class Inference:
    scale: str  # "original" or "standardized" feature units
    standardized_features: bool  # False: the run used raw features, so the two scales coincide
    level: float  # confidence level of the intervals
    coefficients: list[Coefficient]  # the intercept first
    n_obs: int
    log_likelihood: float | None  # unpenalized, at the fitted parameters; None under separation
    effective_parameters: float  # d + 1, or tr(H (H + penalty)^-1) for a penalized fit
    aic: float | None
    bic: float | None
    l2: float
    gradient_norm: float  # of the training objective (mean loss + penalty), as gradfit train reports it
    newton_offset: float | None  # max over coefficients of |Newton step| / standard error
    condition_number: float  # of the Hessian scaled to unit diagonal
    separation: str | None  # "complete", "quasi-complete", None, or "not checked"
    constant_features: list[str]
    withheld: bool  # standard errors not reported (separation, a singular Hessian)
    problems: list[str]  # what makes the table unreliable, with what to do; any problem means exit code 1
    notes: list[str]  # what the reader must know to read it right

    @property
    def converged(self) -> bool | None:
        return None if self.newton_offset is None else self.newton_offset <= CONVERGED_OFFSET


def constant_columns(x: np.ndarray, names: list[str], notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(constant, kept) column indices: a feature constant in the training split (standardized to all zeros) has
    no coefficient, so it is left out, with a note."""
    constant = np.flatnonzero(x.max(axis=0) == x.min(axis=0)) if len(x) else np.array([], int)
    keep = np.setdiff1d(np.arange(x.shape[1]), constant)
    if len(constant):
        notes.append(
            f"{_names(names, constant)} constant in the training split: no coefficient (its effect cannot "
            "be told apart from the intercept's), left out"
        )
    return constant, keep


def covariance_and_offset(
    unit: np.ndarray, eigenvalues: np.ndarray, eigenvectors: np.ndarray, grad: np.ndarray, problems: list[str]
) -> tuple[np.ndarray, float]:
    """The inverse Hessian (from its unit-diagonal eigendecomposition) and how many standard errors one Newton
    step would move the estimates; a problem when that says the fit has not converged."""
    covariance = unit[:, None] * ((eigenvectors / eigenvalues) @ eigenvectors.T) * unit[None, :]
    offset = float(np.max(np.abs(covariance @ grad) / np.sqrt(np.diag(covariance))))
    if offset > CONVERGED_OFFSET:
        problems.append(
            f"the fit has not converged: one Newton step would move the estimates by up to {offset:.3g}"
            " standard errors. Train to the optimum (optimizer.name=lbfgs with train.tol and "
            "runtime.precision=float64; early stopping keeps parameters that are not the optimum)"
        )
    return covariance, offset


def explain_conditioning(
    condition: float, weakest: np.ndarray, names: list[str], problems: list[str], notes: list[str]
) -> None:
    """``weakest``: the eigenvector of the smallest eigenvalue, the combination the data barely determine."""
    direction = _describe_direction(weakest, names)
    if condition > SINGULAR:
        problems.append(
            f"the Hessian is singular or nearly so (condition number {condition:.3g}): the coefficients "
            f"are not identified along {direction} (collinear features). Standard errors are withheld; "
            + (
                "one-hot columns sum to the intercept: set data.reference_category: first, "
                if any("=" in name for name in names)
                else ""
            )
            + "drop one of those features or fit with model.l2 > 0"
        )
    else:
        notes.append(
            f"the Hessian is ill-conditioned (condition number {condition:.3g}): {direction} is nearly "
            "collinear, so the standard errors of those coefficients are inflated"
        )


def conditioning(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(D, eigenvalues, eigenvectors, condition number) of the Hessian scaled to unit diagonal (``unit_diagonal``):
    how well the data determine the coefficients, whatever the features' units."""
    scaled, unit = unit_diagonal(hessian)
    eigenvalues, eigenvectors = np.linalg.eigh(scaled)
    condition = float(eigenvalues.max() / eigenvalues.min()) if eigenvalues.min() > 0 else math.inf
    return unit, eigenvalues, eigenvectors, condition


def unit_diagonal(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D H D, D) with D = diag(1/sqrt(H_ii)): conditioning that does not depend on the features' units."""
    diagonal = np.diag(hessian)
    unit = 1 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    return unit[:, None] * hessian * unit[None, :], unit


def coefficient_rows(
    names: list[str], estimates: np.ndarray | None, covariance: np.ndarray | None, level: float
) -> list[Coefficient]:
    """One row per coefficient; z-based (Wald) p-values and intervals."""
    quantile = NormalDist().inv_cdf(0.5 + level / 2)
    rows = []
    for i, name in enumerate(names):
        estimate = None if estimates is None else float(estimates[i])
        if covariance is None or estimate is None:
            rows.append(Coefficient(name, estimate, None, None, None, None, None))
            continue
        se = float(math.sqrt(covariance[i, i]))
        z = estimate / se
        rows.append(
            Coefficient(
                name,
                estimate,
                se,
                z,
                math.erfc(abs(z) / math.sqrt(2)),
                estimate - quantile * se,
                estimate + quantile * se,
            )
        )
    return rows


def _describe_direction(vector: np.ndarray, names: list[str], limit: int = 4) -> str:
    """An eigenvector as 'the combination 0.71*a - 0.70*b', its largest terms first."""
    largest = np.argsort(-np.abs(vector))[:limit]
    terms = [(vector[i], names[i]) for i in largest if abs(vector[i]) >= 0.1] or [
        (vector[largest[0]], names[largest[0]])
    ]
    (c0, name0), rest = terms[0], terms[1:]
    return f"the combination {c0:.2f}*{name0}" + "".join(
        f" {'-' if c < 0 else '+'} {abs(c):.2f}*{name}" for c, name in rest
    )


def _names(names: list[str], indexes: np.ndarray) -> str:
    shown = ", ".join(names[i] for i in indexes[:5])
    return f"feature {shown} is" if len(indexes) == 1 else f"features {shown}{', ...' if len(indexes) > 5 else ''} are"


def unscaling(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The Jacobian taking [w, b] on standardized features to raw-feature units: logit = sum_j w_j (x_j - m_j) / s_j
    + b is linear in them, so the delta method through it is exact."""
    d = len(mean)
    jacobian = np.eye(d + 1)
    jacobian[:d, :d] = np.diag(1 / std)
    jacobian[d, :d] = -mean / std
    return jacobian
