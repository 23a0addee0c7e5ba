"""The coefficient table of a linear regression (squared loss): agreement with statsmodels' OLS at l2 = 0, the ridge
sandwich covariance against the formula computed here, and the diagnoses (collinear design, constant feature, no
residual degrees of freedom, no convergence).

The fits below are plain NumPy least squares in the space gradfit trains in (standardized features and target), not
gradfit training: the table's numbers on the original scale and in the target's units come from those parameters
through the standardizations, statsmodels' straight from the raw data, so agreement checks the whole chain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gradfit.trained.linear import linear_inference
from gradfit.trained.wald import CONVERGED_OFFSET

sm = pytest.importorskip("statsmodels.api")

REL = 1e-8  # gradfit vs statsmodels OLS: two exact computations, rounding apart
NAMES = ["a", "b", "c", "d"]


def make_data(seed: int = 0, n: int = 200):
    """Raw features with different means and scales, a target with mean ~100 and std ~50; ``d`` has no effect."""
    rng = np.random.default_rng(seed)
    center, spread = np.array([10.0, -5.0, 1000.0, 0.5]), np.array([2.0, 0.1, 300.0, 1.0])
    x = center + spread * rng.standard_normal((n, 4))
    y = 100.0 + (x - center) @ np.array([15.0, -200.0, 0.1, 0.0]) + 40.0 * rng.standard_normal(n)
    return x, y


def standardize(x: np.ndarray, y: np.ndarray):
    mean, std = x.mean(axis=0), x.std(axis=0)
    return (x - mean) / std, mean, std, (y - y.mean()) / y.std(), float(y.mean()), float(y.std())


def least_squares(x: np.ndarray, y: np.ndarray, l2: float = 0.0) -> tuple[np.ndarray, float]:
    """Minimizer of mean((y - x w - b)^2) / 2 + (l2/2)||w||^2: the (penalized) normal equations."""
    n, d = x.shape
    design = np.column_stack([x, np.ones(n)])
    if l2 == 0:
        theta = np.linalg.lstsq(design, y, rcond=None)[0]
    else:
        theta = np.linalg.solve(design.T @ design + np.diag(np.r_[np.full(d, n * l2), 0.0]), design.T @ y)
    return theta[:d], float(theta[d])


def columns(table) -> dict[str, np.ndarray]:
    rows = table.coefficients
    return {
        field: np.array([getattr(row, field) for row in rows], dtype=float)
        for field in ("estimate", "std_error", "z", "p_value", "ci_low", "ci_high")
    }


def assert_matches_ols(table, result) -> None:
    got = columns(table)
    ci = np.asarray(result.conf_int(alpha=1 - table.level))
    expected = {
        "estimate": result.params,
        "std_error": result.bse,
        "z": result.tvalues,
        "p_value": result.pvalues,
        "ci_low": ci[:, 0],
        "ci_high": ci[:, 1],
    }
    for field, values in expected.items():
        np.testing.assert_allclose(got[field], np.asarray(values), rtol=REL, atol=0, err_msg=field)
    assert table.log_likelihood == pytest.approx(result.llf, rel=REL)
    assert table.aic == pytest.approx(result.aic, rel=REL)
    assert table.bic == pytest.approx(result.bic, rel=REL)
    assert table.effective_parameters == result.df_model + 1
    assert table.n_obs == result.nobs


# ------------------------------------------------------------------------------------------------ l2 = 0: OLS


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_table_equals_statsmodels_ols_on_both_scales(level):
    x, y = make_data()
    xs, mean, std, ys, target_mean, target_std = standardize(x, y)
    w, b = least_squares(xs, ys)
    common = dict(mean=mean, std=std, target_mean=target_mean, target_std=target_std, level=level)

    original = linear_inference(xs, ys, w, b, 0.0, NAMES, scale="original", **common)
    assert_matches_ols(original, sm.OLS(y, sm.add_constant(x)).fit())
    standardized = linear_inference(xs, ys, w, b, 0.0, NAMES, scale="standardized", **common)
    assert_matches_ols(standardized, sm.OLS(y, sm.add_constant(xs)).fit())

    for table in (original, standardized):
        assert [row.name for row in table.coefficients] == ["(intercept)", *NAMES]
        assert table.standardized_features and not table.withheld and table.problems == []
        assert table.converged and table.newton_offset < 1e-6 and table.gradient_norm < 1e-10
        assert table.separation is None and table.l2 == 0.0 and table.condition_number < 10
    r2 = sm.OLS(y, sm.add_constant(x)).fit()
    assert f"R^2 = {r2.rsquared:.4g}, adjusted R^2 = {r2.rsquared_adj:.4g}" in " ".join(original.notes)
    # the effect-free feature is not significant, the others are
    p_values = {row.name: row.p_value for row in original.coefficients}
    assert p_values["d"] > 1e-3 and max(p_values[k] for k in "abc") < 1e-6


def test_raw_features_and_target_need_no_standardization():
    x, y = make_data(seed=1)
    w, b = least_squares(x, y)
    table = linear_inference(x, y, w, b, 0.0, NAMES)
    assert not table.standardized_features
    assert_matches_ols(table, sm.OLS(y, sm.add_constant(x)).fit())


# ------------------------------------------------------------------------------------------------ ridge


def test_ridge_reports_the_penalized_estimates_with_the_sandwich_covariance():
    x, y = make_data(seed=2)
    xs, mean, std, ys, target_mean, target_std = standardize(x, y)
    n, l2 = len(y), 0.05
    w, b = least_squares(xs, ys, l2)
    table = linear_inference(xs, ys, w, b, l2, NAMES, mean, std, target_mean, target_std, scale="original")

    # independently: the ridge estimator's covariance for a fixed penalty, in standardized units, then raw units
    design = np.column_stack([xs, np.ones(n)])
    gram = design.T @ design
    inverse = np.linalg.inv(gram + np.diag(np.r_[np.full(4, n * l2), 0.0]))
    df = float(np.trace(design @ inverse @ design.T))
    theta = np.r_[w, b]
    sigma2 = float(np.sum((ys - design @ theta) ** 2)) / (n - df)
    covariance = target_std**2 * sigma2 * inverse @ gram @ inverse
    jacobian = np.eye(5)
    jacobian[:4, :4] = np.diag(1 / std)
    jacobian[4, :4] = -mean / std
    covariance = jacobian @ covariance @ jacobian.T
    estimates = target_std * jacobian @ theta + np.r_[np.zeros(4), target_mean]
    order = [4, 0, 1, 2, 3]

    got = columns(table)
    np.testing.assert_allclose(got["estimate"], estimates[order], rtol=1e-10)
    np.testing.assert_allclose(got["std_error"], np.sqrt(np.diag(covariance))[order], rtol=1e-10)
    quantile = stats.t.ppf(0.975, n - df)
    np.testing.assert_allclose(got["ci_high"] - got["estimate"], quantile * got["std_error"], rtol=1e-10)
    assert table.effective_parameters == pytest.approx(df, rel=1e-10) and df < 5
    sse = target_std**2 * float(np.sum((ys - design @ theta) ** 2))
    assert table.log_likelihood == pytest.approx(-n / 2 * (math.log(2 * math.pi * sse / n) + 1), rel=1e-12)
    assert table.aic == pytest.approx(2 * df - 2 * table.log_likelihood, rel=1e-12)
    # the estimates are the penalized ones: shrunk, so not OLS's
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    assert abs(got["estimate"][2]) < abs(ols.params[2])
    assert table.converged and not table.withheld and table.problems == []
    note = " ".join(table.notes)
    assert "penalized fit (model.l2 = 0.05)" in note and "sandwich" in note and "approximate" in note


# ------------------------------------------------------------------------------------------------ the diagnoses


def test_collinear_design_is_withheld_naming_the_combination():
    x, y = make_data(seed=3)
    x[:, 2] = x[:, 0] - 2 * x[:, 1]  # c = a - 2 b
    w, b = least_squares(x, y)
    table = linear_inference(x, y, w, b, 0.0, NAMES)
    assert table.withheld and table.newton_offset is None
    assert len(table.problems) == 1
    problem = table.problems[0]
    assert "singular" in problem and "collinear" in problem
    assert all(f"*{name}" in problem for name in "abc") and "*d" not in problem
    assert all(row.std_error is None and row.p_value is None for row in table.coefficients)
    assert all(row.estimate is not None for row in table.coefficients)
    # a penalty identifies them
    w, b = least_squares(x, y, 1.0)
    assert not linear_inference(x, y, w, b, 1.0, NAMES).withheld


def test_constant_feature_is_left_out_with_a_note():
    x, y = make_data(seed=4)
    xs, mean, std, ys, target_mean, target_std = standardize(x, y)
    w, b = least_squares(xs, ys)
    reference = linear_inference(xs, ys, w, b, 0.0, NAMES, mean, std, target_mean, target_std)

    with_constant = np.column_stack([xs[:, :2], np.zeros(len(y)), xs[:, 2:]])  # a constant standardizes to 0
    table = linear_inference(
        with_constant,
        ys,
        np.r_[w[:2], 0.0, w[2:]],
        b,
        0.0,
        ["a", "b", "k", "c", "d"],
        np.r_[mean[:2], 7.0, mean[2:]],
        np.r_[std[:2], 1.0, std[2:]],
        target_mean,
        target_std,
    )
    assert table.constant_features == ["k"] and not table.withheld
    assert any("feature k is constant in the training split" in note for note in table.notes)
    assert [row.name for row in table.coefficients] == [row.name for row in reference.coefficients]
    np.testing.assert_allclose(columns(table)["std_error"], columns(reference)["std_error"], rtol=1e-12)
    assert table.effective_parameters == 5 and table.aic == pytest.approx(reference.aic, rel=1e-12)


def test_no_residual_degrees_of_freedom_is_withheld():
    x, y = make_data(seed=5, n=5)  # 5 rows, 5 coefficients: an exact fit
    w, b = least_squares(x, y)
    table = linear_inference(x, y, w, b, 0.0, NAMES)
    assert table.withheld
    assert any("no residual degrees of freedom" in problem for problem in table.problems)


def test_parameters_one_standard_error_away_are_not_converged():
    x, y = make_data(seed=6)
    xs, mean, std, ys, target_mean, target_std = standardize(x, y)
    w, b = least_squares(xs, ys)
    converged = linear_inference(xs, ys, w, b, 0.0, NAMES, mean, std, target_mean, target_std, "standardized")
    se_a = converged.coefficients[1].std_error / target_std  # in the units the weights are fitted in
    perturbed = w + np.array([se_a, 0.0, 0.0, 0.0])

    table = linear_inference(xs, ys, perturbed, b, 0.0, NAMES, mean, std, target_mean, target_std)
    assert table.converged is False and not table.withheld
    # the step back is exactly 1 SE at the optimum's sigma; at the perturbed point sigma is a little larger
    assert 0.9 < table.newton_offset <= 1.0 and table.newton_offset > CONVERGED_OFFSET
    assert any("has not converged" in problem for problem in table.problems)
    n = len(ys)
    assert table.gradient_norm == pytest.approx(
        np.linalg.norm(np.r_[xs.T @ xs[:, 0], xs[:, 0].sum()] * se_a) / n, rel=1e-8
    )
