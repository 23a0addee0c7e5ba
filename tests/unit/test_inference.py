"""Coefficient inference for logistic regression: agreement with an independent Newton-Raphson (IRLS) reference,
interval coverage, and the diagnoses (separation, singular or ill-conditioned Hessian, no convergence).

The reference below is plain NumPy, shares no code with gradfit, and works on the raw 0/1 labels with an explicit
intercept column: gradfit's numbers on the original scale come from the standardized fit through the delta method,
the reference's straight from the raw features, so agreement checks the whole chain.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, make_config
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.trained.inference import detect_separation, logistic_inference
from gradfit.trained.multinomial import multinomial_inference
from gradfit.trained.wald import CONVERGED_OFFSET, ILL_CONDITIONED, SINGULAR
from gradfit.training.loop import fit

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence
Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
REL = 1e-6  # estimates and standard errors: gradfit (L-BFGS to a 1e-12 gradient, then jax.hessian) vs IRLS
EXACT_FIT = (
    "optimizer.name=lbfgs",
    "optimizer.learning_rate=null",
    "runtime.precision=float64",
    "train.steps=500",
    "train.tol=1e-12",
    "data.val_fraction=0",
    "data.test_fraction=0",
)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


# ------------------------------------------------------------------------------------------- the reference


def irls(x: np.ndarray, y01: np.ndarray, penalty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Newton-Raphson for sum of Bernoulli log-likelihoods minus beta' P beta / 2; x includes any intercept column.

    Returns (estimates, covariance = inverse of the (penalized) observed information at the estimates).
    """
    k = x.shape[1]
    p_matrix = np.zeros((k, k)) if penalty is None else penalty
    beta = np.zeros(k)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ beta)))
        information = (x * (p * (1 - p))[:, None]).T @ x + p_matrix
        step = np.linalg.solve(information, x.T @ (y01 - p) - p_matrix @ beta)
        beta = beta + step
        if np.max(np.abs(step)) <= 1e-15 * (1 + np.max(np.abs(beta))):
            break
    p = 1 / (1 + np.exp(-(x @ beta)))
    information = (x * (p * (1 - p))[:, None]).T @ x + p_matrix
    return beta, np.linalg.inv(information)


def log_likelihood(x: np.ndarray, y01: np.ndarray, beta: np.ndarray) -> float:
    eta = x @ beta
    return float(np.sum(y01 * -np.logaddexp(0, -eta) + (1 - y01) * -np.logaddexp(0, eta)))


def with_intercept(x: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(x)), x])


def write_csv(path: Path, x: np.ndarray, labels, names: list[str]) -> Path:
    """repr() of a float64 reads back bit for bit, so gradfit sees exactly the reference's numbers."""
    lines = [",".join(names + ["target"])]
    lines += [",".join(repr(float(v)) for v in row) + f",{label}" for row, label in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def by_name(table: dict) -> dict:
    return {c["name"]: c for c in table["coefficients"]}


# --------------------------------------------------------------------------- gradfit's pipeline vs the reference

NAMES = ["a", "b", "c"]  # gradfit lists the intercept first: "(intercept)", then these
MU, SIGMA = np.array([5.0, -2.0, 100.0]), np.array([2.0, 0.5, 30.0])  # different means and scales
TRUE_W, TRUE_B = np.array([0.3, -1.0, 0.02]), -4.5  # mean logit about -0.5, sd about 1


@pytest.fixture(scope="module")
def known_data(tmp_path_factory):
    """n = 2000 rows of x_j = mu_j + s_j N(0, 1) and y ~ Bernoulli(sigmoid(x w + b)), as a CSV."""
    rng = np.random.default_rng(20261126)
    x = MU + SIGMA * rng.standard_normal((2000, 3))
    y01 = (rng.random(2000) < 1 / (1 + np.exp(-(x @ TRUE_W + TRUE_B)))).astype(int)
    folder = tmp_path_factory.mktemp("known")
    return x, y01, write_csv(folder / "known.csv", x, y01, NAMES), folder


def train_on(path: Path, out_dir: Path, *overrides: str) -> Path:
    summary = fit(make_config(f"data={{source: file, path: {path}}}", *EXACT_FIT, *overrides), out_dir=out_dir)
    assert summary.stop_reason.startswith("converged"), summary.stop_reason
    return Path(summary.run_dir)


@pytest.fixture(scope="module")
def mle_run(known_data):
    _, _, csv_path, folder = known_data
    return train_on(csv_path, folder / "runs")


def run_inference(run_dir: Path, json_path: Path, *options: str, exit_code: int = 0) -> tuple[dict, str]:
    result = invoke("inference", run_dir, "--json-out", json_path, *options)
    assert result.exit_code == exit_code, result.output
    return json.loads(json_path.read_text(encoding="utf-8")), result.output


def assert_table_matches(table: dict, beta: np.ndarray, cov: np.ndarray, order: list[str]) -> None:
    """Estimates and standard errors within REL; z, p, CI derived from them as stated (intercept first in beta)."""
    rows = by_name(table)
    se = np.sqrt(np.diag(cov))
    for name, estimate, std_error in zip(order, beta, se):
        row = rows[name]
        assert row["estimate"] == pytest.approx(estimate, rel=REL), name
        assert row["std_error"] == pytest.approx(std_error, rel=REL), name
        z = estimate / std_error
        assert row["z"] == pytest.approx(z, rel=REL), name
        assert row["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=REL), name
        assert row["ci_low"] == pytest.approx(estimate - Z95 * std_error, rel=REL, abs=1e-9 * std_error), name
        assert row["ci_high"] == pytest.approx(estimate + Z95 * std_error, rel=REL, abs=1e-9 * std_error), name
    assert [c["name"] for c in table["coefficients"]] == order


def test_original_scale_matches_irls_on_the_raw_features(known_data, mle_run, tmp_path):
    x, y01, _, _ = known_data
    beta, cov = irls(with_intercept(x), y01)
    table, output = run_inference(mle_run, tmp_path / "original.json")
    assert table["scale"] == "original" and table["level"] == 0.95
    assert table["converged"] is True and table["problems"] == [] and table["separation"] is None
    assert table["newton_offset"] < CONVERGED_OFFSET
    assert_table_matches(table, beta, cov, ["(intercept)"] + NAMES)

    n, k = len(y01), 4
    ll = log_likelihood(with_intercept(x), y01, beta)
    assert table["n_obs"] == n
    assert table["log_likelihood"] == pytest.approx(ll, rel=1e-9)
    assert table["aic"] == pytest.approx(2 * k - 2 * ll, rel=1e-9)
    assert table["bic"] == pytest.approx(k * math.log(n) - 2 * ll, rel=1e-9)
    assert table["l2"] == 0 and "penalized" not in output
    # and the intervals are plausible for the truth (not a coverage claim: one data set)
    truth = {"(intercept)": TRUE_B, **dict(zip(NAMES, TRUE_W))}
    for name, row in by_name(table).items():
        assert abs(row["estimate"] - truth[name]) < 4 * row["std_error"], name


def test_standardized_scale_matches_irls_on_the_standardized_features(known_data, mle_run, tmp_path):
    x, y01, _, _ = known_data
    scaling = json.loads((mle_run / "preprocessing.json").read_text(encoding="utf-8"))["standardize"]
    z = (x - np.array(scaling["mean"])) / np.array(scaling["std"])
    beta, cov = irls(with_intercept(z), y01)
    table, _ = run_inference(mle_run, tmp_path / "standardized.json", "--scale", "standardized")
    assert table["scale"] == "standardized"
    assert_table_matches(table, beta, cov, ["(intercept)"] + NAMES)
    # another level: the same estimates and standard errors, intervals from the 0.95 quantile
    table90, output = run_inference(mle_run, tmp_path / "level90.json", "--scale", "standardized", "--level", "0.9")
    assert table90["level"] == 0.9 and "90% CI low" in output
    for row, std_error in zip(table90["coefficients"], np.sqrt(np.diag(cov))):
        assert row["std_error"] == pytest.approx(std_error, rel=REL)
        assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 1.6448536269514722 * std_error, rel=REL)
    # the likelihood does not depend on the scale the coefficients are reported on
    assert table["log_likelihood"] == pytest.approx(
        log_likelihood(with_intercept(x), y01, irls(with_intercept(x), y01)[0]), rel=1e-9
    )


def test_penalized_fit_matches_irls_on_the_penalized_objective_and_says_so(known_data, tmp_path):
    x, y01, csv_path, _ = known_data
    l2 = 0.01
    run_dir = train_on(csv_path, tmp_path / "runs", f"model.l2={l2}")
    scaling = json.loads((run_dir / "preprocessing.json").read_text(encoding="utf-8"))["standardize"]
    z = (x - np.array(scaling["mean"])) / np.array(scaling["std"])
    n = len(y01)
    # gradfit minimizes mean NLL + (l2/2)||w||^2 on the standardized weights, i.e. sum NLL + (n l2/2)||w||^2;
    # the intercept is not penalized
    penalty = np.diag([0.0] + [n * l2] * 3)
    beta, cov = irls(with_intercept(z), y01, penalty)
    table, output = run_inference(run_dir, tmp_path / "penalized.json", "--scale", "standardized")
    assert_table_matches(table, beta, cov, ["(intercept)"] + NAMES)
    assert table["l2"] == l2 and table["converged"] is True and table["problems"] == []
    assert table["log_likelihood"] == pytest.approx(log_likelihood(with_intercept(z), y01, beta), rel=1e-9)
    assert any("penalized fit" in note for note in table["notes"])
    assert "note: penalized fit (model.l2 = 0.01)" in output
    # the unpenalized MLE differs: the comparison above really is against the penalized optimum
    mle, _ = irls(with_intercept(z), y01)
    assert np.max(np.abs(mle[1:] - beta[1:]) / np.abs(mle[1:])) > 1e-3


def test_95_percent_intervals_cover_the_truth_at_about_the_nominal_rate():
    """logistic_inference at the IRLS MLE of 200 seeded data sets (n = 400, two features plus an intercept).

    600 intervals; if each covered with probability 0.95 independently, the rate's sd would be
    sqrt(0.95 * 0.05 / 600) = 0.009, so [0.92, 0.98] is about +-3.4 sd: a wrong standard error (a factor 1.2 too
    small gives 0.90, a missing square root much less) fails it, while the seeds are fixed so the test is
    deterministic. Wald intervals at n = 400 are close to nominal for these moderate coefficients.
    """
    true_w, true_b, n = np.array([0.8, -0.5]), 0.3, 400
    truth = {"(intercept)": true_b, "u": true_w[0], "v": true_w[1]}
    covered = total = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, 2))
        y01 = (rng.random(n) < 1 / (1 + np.exp(-(x @ true_w + true_b)))).astype(float)
        beta, _ = irls(with_intercept(x), y01)
        result = logistic_inference(x, 2 * y01 - 1, beta[1:], beta[0], 0.0, ["u", "v"], level=0.95)
        assert not result.problems and result.converged
        for c in result.coefficients:
            covered += c.ci_low <= truth[c.name] <= c.ci_high
            total += 1
    assert total == 600
    assert 0.92 <= covered / total <= 0.98, covered / total


# --------------------------------------------------------------------------------------------- diagnoses


@pytest.mark.parametrize(
    "training",
    [
        pytest.param(("runtime.precision=float64", "train.steps=500"), id="long-float64-fit"),
        pytest.param((), id="shipped-100-float32-steps"),  # the fit still misclassifies rows: the LP sees separation
    ],
)
def test_breast_cancer_unpenalized_reports_complete_separation_instead_of_standard_errors(training, tmp_path):
    config = make_config(
        "model.l2=0", "data.val_fraction=0", "data.test_fraction=0", *training, path=CONFIGS / "logreg.yaml"
    )
    run_dir = Path(fit(config, out_dir=tmp_path / "runs").run_dir)
    table, output = run_inference(run_dir, tmp_path / "separated.json", exit_code=1)
    assert "complete separation" in output
    assert table["separation"] == "complete" and table["withheld"] is True and table["converged"] is None
    assert len(table["coefficients"]) == 31  # intercept and 30 features
    for c in table["coefficients"]:
        assert c["std_error"] is None and c["z"] is None and c["p_value"] is None, c
        assert c["ci_low"] is None and c["ci_high"] is None, c
        assert c["estimate"] is None, c  # withheld too: it only reflects when the optimizer stopped
    assert any("complete separation" in p for p in table["problems"])
    assert table["log_likelihood"] is None and table["aic"] is None and table["bic"] is None


def test_breast_cancer_shipped_config_is_penalized_with_finite_standard_errors(tmp_path):
    run_dir = Path(fit(make_config(path=CONFIGS / "logreg.yaml"), out_dir=tmp_path / "runs").run_dir)
    table, output = run_inference(run_dir, tmp_path / "shipped.json")
    assert table["withheld"] is False and table["problems"] == []
    for c in table["coefficients"]:
        assert c["std_error"] is not None and math.isfinite(c["std_error"]) and c["std_error"] > 0, c
        assert math.isfinite(c["estimate"]) and c["ci_low"] < c["estimate"] < c["ci_high"], c
    assert any("penalized" in note for note in table["notes"])
    assert "penalized fit (model.l2 = 0.001)" in output


@pytest.mark.parametrize("noise", [0.0, 1e-7], ids=["exact-duplicate", "1e-7-apart"])
def test_collinear_columns_are_reported_as_singular_naming_both(noise, tmp_path):
    rng = np.random.default_rng(3)
    n = 500
    x1, x3 = rng.standard_normal(n), rng.standard_normal(n)
    x2 = x1 + noise * rng.standard_normal(n)
    y01 = (rng.random(n) < 1 / (1 + np.exp(-(x1 + 0.5 * x3)))).astype(int)  # overlapping classes: no separation
    csv_path = write_csv(tmp_path / "collinear.csv", np.column_stack([x1, x2, x3]), y01, ["x1", "x2", "x3"])
    run_dir = train_on(csv_path, tmp_path / "runs")
    table, output = run_inference(run_dir, tmp_path / "singular.json", exit_code=1)
    assert table["separation"] is None and table["withheld"] is True
    assert table["condition_number"] is None or table["condition_number"] > SINGULAR  # inf is written as null
    (problem,) = table["problems"]
    assert "singular" in problem and "x1" in problem and "x2" in problem and "x3" not in problem
    assert "problem: the Hessian is singular" in output
    assert all(c["std_error"] is None for c in table["coefficients"])


def test_nearly_collinear_columns_get_an_ill_conditioned_note_and_standard_errors():
    """x2 = x1 + 1e-3 noise (correlation 0.9999995): condition number about 4/eps^2 = 4e6, between the thresholds.

    (Milder collinearity, e.g. correlation 0.9999, gives a condition number near 3e4: inflated standard errors
    but below ILL_CONDITIONED = 1e6, so no note; that is the documented threshold, not tested here.)
    """
    rng = np.random.default_rng(3)
    n = 500
    x1, x3 = rng.standard_normal(n), rng.standard_normal(n)
    x2 = x1 + 1e-3 * rng.standard_normal(n)
    y01 = (rng.random(n) < 1 / (1 + np.exp(-(x1 + 0.5 * x3)))).astype(float)
    x = np.column_stack([x1, x2, x3])
    beta, cov = irls(with_intercept(x), y01)
    result = logistic_inference(x, 2 * y01 - 1, beta[1:], beta[0], 0.0, ["x1", "x2", "x3"])
    assert ILL_CONDITIONED < result.condition_number < SINGULAR
    assert not result.withheld and result.problems == [] and result.converged
    (note,) = [n for n in result.notes if "ill-conditioned" in n]
    assert "x1" in note and "x2" in note and "x3" not in note
    se = {c.name: c.std_error for c in result.coefficients}
    reference = dict(zip(["(intercept)", "x1", "x2", "x3"], np.sqrt(np.diag(cov))))
    for name in reference:
        assert se[name] == pytest.approx(reference[name], rel=REL), name
    assert se["x1"] > 100 * se["x3"]  # inflated, as the note says


def test_parameters_away_from_the_optimum_are_reported_as_not_converged():
    rng = np.random.default_rng(5)
    n = 2000
    x = rng.standard_normal((n, 2))
    y01 = (rng.random(n) < 1 / (1 + np.exp(-(x @ [1.0, -0.5] + 0.2)))).astype(float)
    beta, cov = irls(with_intercept(x), y01)
    at_mle = logistic_inference(x, 2 * y01 - 1, beta[1:], beta[0], 0.0, ["u", "v"])
    assert at_mle.converged is True and at_mle.newton_offset < 1e-6

    moved = beta + 0.5 * np.sqrt(np.diag(cov))  # half a standard error off in every coefficient
    result = logistic_inference(x, 2 * y01 - 1, moved[1:], moved[0], 0.0, ["u", "v"])
    assert result.converged is False
    assert 0.3 < result.newton_offset < 0.8  # one Newton step would move them back about half an SE
    (problem,) = result.problems
    assert "not converged" in problem
    assert not result.withheld  # the table is still shown, with the warning


def test_inference_on_an_mlp_run_exits_2_saying_it_is_for_logistic_regression(tmp_path):
    summary = fit(
        make_config(
            "data.source=synthetic", "model.kind=mlp", "model.hidden=[4]", "train.steps=2", "train.log_every=1"
        ),
        out_dir=tmp_path / "runs",
    )
    result = invoke("inference", summary.run_dir)
    assert result.exit_code == 2, result.output
    assert "inference applies to logistic and linear regression" in result.output and "MLP" in result.output
    assert "Traceback" not in result.output


def test_multinomial_table_equals_statsmodels_mnlogit_at_l2_zero():
    # a small well-conditioned problem: 3 classes, 3 features on different scales, 600 rows, no separation
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((600, 3)) * [1.0, 5.0, 0.2] + [0.0, 10.0, -1.0]
    logits = np.c_[np.zeros(600), 0.5 + x @ [0.8, -0.1, 2.0], -0.3 + x @ [-0.5, 0.2, -1.5]]
    y = np.array([rng.choice(3, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    w, b = _softmax_fit(z, y)
    result = multinomial_inference(z, y, w, b, 0.0, ["a", "b", "c"], [0, 1, 2], mean, std)
    reference = sm.MNLogit(y, sm.add_constant(x)).fit(method="newton", tol=1e-14, maxiter=200, disp=False)
    ci = reference.conf_int()  # rows: per class, the constant first, as gradfit's table
    expected = np.c_[
        reference.params.T.ravel(), reference.bse.T.ravel(), reference.tvalues.T.ravel(), reference.pvalues.T.ravel()
    ]
    table = result.coefficients
    assert [row.name for row in table[:4]] == ["1 vs 0: (intercept)", "1 vs 0: a", "1 vs 0: b", "1 vs 0: c"]
    got = np.array([[row.estimate, row.std_error, row.z, row.p_value] for row in table])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose([[r.ci_low, r.ci_high] for r in table], np.asarray(ci).reshape(-1, 2), rtol=1e-6)
    assert result.log_likelihood == pytest.approx(reference.llf, rel=1e-10)
    assert result.aic == pytest.approx(reference.aic, rel=1e-10) and result.bic == pytest.approx(
        reference.bic, rel=1e-10
    )
    assert result.converged and not result.problems


def _softmax_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-likelihood softmax regression by Newton's method in the reference-class parameterization (K blocks
    returned, the first all zero), to machine precision: what a converged gradfit run holds."""
    n, d = x.shape
    k = int(y.max()) + 1
    design = np.c_[x, np.ones(n)]
    theta = np.zeros((k - 1) * (d + 1))
    for _ in range(50):
        blocks = theta.reshape(k - 1, d + 1)
        logits = np.c_[np.zeros(n), design @ blocks.T]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        residual = (p - np.eye(k)[y])[:, 1:]
        grad = (design.T @ residual).T.ravel()
        hessian = np.zeros((len(theta), len(theta)))
        for a in range(k - 1):
            for c in range(k - 1):
                weight = p[:, a + 1] * ((a == c) - p[:, c + 1])
                hessian[a * (d + 1) : (a + 1) * (d + 1), c * (d + 1) : (c + 1) * (d + 1)] = design.T @ (
                    weight[:, None] * design
                )
        theta -= np.linalg.solve(hessian, grad)
    blocks = np.r_[np.zeros((1, d + 1)), theta.reshape(k - 1, d + 1)]
    return blocks[:, :d].T, blocks[:, d]


def test_multinomial_run_inference_through_the_cli(tmp_path):
    summary = fit(
        make_config(
            "data.source=synthetic",
            "data.synthetic.n_classes=3",
            "data.synthetic.n_features=3",
            "data.synthetic.separation=0.5",
            "optimizer.name=lbfgs",
            "model.l2=0.01",
            "runtime.precision=float64",
            "train.steps=200",
            "train.tol=1e-10",
        ),
        out_dir=tmp_path / "runs",
    )
    result = invoke("inference", summary.run_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [row["name"] for row in report["coefficients"]]
    assert len(names) == 2 * 4 and names[0] == "1 vs 0: (intercept)" and names[4] == "2 vs 0: (intercept)"
    assert report["negative_class"] == 0 and report["positive_class"] is None
    assert all(row["std_error"] > 0 for row in report["coefficients"])
    assert any("penalized fit" in note for note in report["notes"])
    drawn = invoke("inference", summary.run_dir)
    assert "Multinomial logistic regression: log-odds of each class vs 0" in drawn.output


# ------------------------------------------------------------------------------------- diagnoses from review


def test_separation_is_detected_from_the_data_not_the_fit():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 2))
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    assert detect_separation(x, y) == "complete"
    y_quasi = np.where(x[:, 0] > 0, 1.0, -1.0)
    x_quasi = np.vstack([x, [[0.0, 0.0], [0.0, 0.0]]])  # the same point in both classes, on the boundary
    assert detect_separation(x_quasi, np.r_[y_quasi, 1.0, -1.0]) == "quasi-complete"
    noisy = np.where(x[:, 0] + rng.logistic(size=200) > 0, 1.0, -1.0)
    assert detect_separation(x, noisy) is None
    # whatever parameters the optimizer stopped at (here: zero), separated data withhold everything
    result = logistic_inference(x, y, np.zeros(2), 0.0, 0.0, ["a", "b"], scale="standardized")
    assert result.separation == "complete" and result.withheld and result.log_likelihood is None
    assert all(c.estimate is None and c.std_error is None for c in result.coefficients)


def test_feature_units_do_not_make_a_well_identified_model_singular(known_data):
    x, y01, _, _ = known_data
    scaled = x * [1e4, 1e-2, 1.0]  # dollars next to kilometres: units, not collinearity
    beta, cov = irls(with_intercept(scaled), y01)
    result = logistic_inference(scaled, np.where(y01 == 1, 1.0, -1.0), beta[1:], beta[0], 0.0, NAMES)
    assert not result.withheld and result.problems == [] and result.condition_number < 1e3
    np.testing.assert_allclose([c.std_error for c in result.coefficients], np.sqrt(np.diag(cov)), rtol=1e-6)


def test_a_constant_feature_is_left_out_and_does_not_inflate_the_intercept(known_data):
    x, y01, _, _ = known_data
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    with_constant = np.column_stack([z, np.zeros(len(z))])  # a column of 100s, standardized as gradfit does
    l2, n = 0.01, len(z)
    penalty = np.diag(np.r_[0.0, np.full(3, n * l2)])
    beta, cov = irls(with_intercept(z), y01, penalty)
    result = logistic_inference(
        with_constant,
        np.where(y01 == 1, 1.0, -1.0),
        np.r_[beta[1:], 0.0],
        beta[0],
        l2,
        NAMES + ["constant"],
        mean=np.r_[mean, 100.0],
        std=np.r_[std, 1.0],
        scale="standardized",
    )
    assert result.constant_features == ["constant"] and any("constant" in note for note in result.notes)
    assert [c.name for c in result.coefficients] == ["(intercept)"] + NAMES
    np.testing.assert_allclose([c.std_error for c in result.coefficients], np.sqrt(np.diag(cov)), rtol=1e-6)


def test_a_fit_that_has_not_converged_exits_1(known_data, tmp_path):
    _, _, csv_path, folder = known_data
    summary = fit(
        make_config(
            f"data={{source: file, path: {csv_path}}}",
            "optimizer.learning_rate=0.01",
            "train.steps=20",
            "data.val_fraction=0",
            "data.test_fraction=0",
        ),
        out_dir=tmp_path,
    )
    table, output = run_inference(Path(summary.run_dir), tmp_path / "t.json", exit_code=1)
    assert table["converged"] is False and "not converged" in output
    assert all(c["std_error"] is not None for c in table["coefficients"])  # shown, but flagged
