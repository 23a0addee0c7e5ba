"""Regression (model.kind linear, losses squared and huber, MLP regression) against the reference libraries.

- ridge: scikit-learn's ``Ridge`` (predictions and the objective in the target's units);
- least squares: statsmodels' ``OLS`` table (estimates, standard errors, t, p-values, intervals, likelihood);
- huber: scikit-learn's ``HuberRegressor`` at its fitted scale (a documented convention difference);
- the hand-derived gradients of every regression model against JAX autodiff, compare-grads, planted errors;
- the command line end to end (train, predict, eval, inference), config and data errors, and streaming.

The target is standardized internally; every number compared here is in the target's units.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import CONFIGS, ROOT, make_config
from typer.testing import CliRunner

from gradfit.api import load_run
from gradfit.cli.app import app
from gradfit.core.losses import hand_derived_gradient
from gradfit.data import load
from gradfit.data.dataset import load_dataset
from gradfit.errors import ConfigError, DataError, GradfitError
from gradfit.gradients import problem
from gradfit.gradients.check_report import FAIL
from gradfit.gradients.checked_point import FLOAT64
from gradfit.gradients.gradcheck import CheckOptions, check_gradient, planted_error
from gradfit.training.loop import fit

sklearn_linear = pytest.importorskip("sklearn.linear_model")
sklearn_metrics = pytest.importorskip("sklearn.metrics")
sm = pytest.importorskip("statsmodels.api")

runner = CliRunner()
LINEAR = CONFIGS / "linear.yaml"
DIABETES = ROOT / "data" / "diabetes.csv"
ALL_ROWS = ("data.val_fraction=0", "data.test_fraction=0")  # every row in the training split
EXACT = ("train.tol=1e-12", "train.steps=1000")  # float64 L-BFGS (linear.yaml) run to the optimum


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def raw_diabetes() -> tuple[np.ndarray, np.ndarray]:
    """The diabetes file as it is: (442, 10) raw features in file order, and the raw target."""
    table = np.loadtxt(DIABETES, delimiter=",", skiprows=1)
    return table[:, :10], table[:, 10]


def training_rows(config) -> tuple[np.ndarray, np.ndarray]:
    """The training split as the model saw it (standardized features) and its target in the target's units."""
    data = load_dataset(config)
    mean, std = data.target_scale
    return np.asarray(data.train.x, np.float64), mean + std * np.asarray(data.train.y, np.float64)


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ 1. ridge


def test_ridge_equals_scikit_learn_ridge_in_the_targets_units(out_dir):
    """Ridge minimizes ||y - Xw - b||^2 + alpha ||w||^2 = 2n [mean((1/2) r^2) + (alpha / (2n)) ||w||^2]: ours with
    l2 = alpha / n, on the same standardized features and the raw target (gradfit standardizes the target inside,
    which rescales the objective by std^2 and leaves its minimizer, in the target's units, unchanged)."""
    l2 = 0.05
    summary = fit(make_config(f"model.l2={l2}", *ALL_ROWS, *EXACT, path=LINEAR), out_dir=out_dir)
    assert summary.status == "completed" and summary.stop_reason.startswith("converged")
    run = load_run(summary.run_dir)
    x, y = training_rows(run.config)
    n = len(y)
    assert n == 442
    ridge = sklearn_linear.Ridge(alpha=l2 * n, solver="cholesky").fit(x, y)  # a direct solve: exact

    # predictions from the raw file's features through the run's saved standardization: measured 6e-14 relative
    raw_x, _ = raw_diabetes()
    scaling = run.preprocessing["standardize"]
    expected = ridge.predict((raw_x - np.asarray(scaling["mean"])) / np.asarray(scaling["std"]))
    np.testing.assert_allclose(run.predict(raw_x), expected, rtol=1e-8)
    np.testing.assert_allclose(run.predictions()(x), ridge.predict(x), rtol=1e-8)

    # the objective in the target's units: mean((1/2) r^2) + (l2/2) ||w_target||^2; measured equal to the last bit
    residual = y - ridge.predict(x)
    reference = np.mean(0.5 * residual**2) + l2 / 2 * ridge.coef_ @ ridge.coef_
    assert summary.objective == pytest.approx(reference, rel=1e-8)
    assert summary.final["train_loss"] == pytest.approx(np.mean(0.5 * residual**2), rel=1e-8)

    # the start (w = 0, b = 0): train_loss = (1/2) var(y) and grad_norm = ||X^T (y - mean)|| / n in target units
    first = read_metrics(summary.run_dir)[0]
    assert first["step"] == 0
    assert first["train_loss"] == pytest.approx(0.5 * np.var(y), rel=1e-12)
    assert first["grad_norm"] == pytest.approx(np.linalg.norm(x.T @ (y - y.mean())) / n, rel=1e-10)


# ------------------------------------------------------------------------------------------------ 2. OLS


def test_least_squares_inference_equals_statsmodels_ols(out_dir):
    """l2 = 0: the coefficient table on the raw features' scale equals OLS(y, [1, x]) on the raw data, whatever the
    order of the rows (gradfit's training split is a shuffle of the file). Measured: 3e-13 relative at most."""
    summary = fit(make_config(*ALL_ROWS, *EXACT, path=LINEAR), out_dir=out_dir)
    run = load_run(summary.run_dir)
    table = run.inference()
    assert table.problems == [] and not table.withheld and table.n_obs == 442
    raw_x, raw_y = raw_diabetes()
    # the training split holds every row of the file, in another order
    _, split_y = training_rows(run.config)
    assert not np.array_equal(split_y, raw_y)
    np.testing.assert_allclose(np.sort(split_y), np.sort(raw_y), rtol=1e-14)

    names = ["(intercept)", "age", "sex", "bmi", "bp", "s1_tc", "s2_ldl", "s3_hdl", "s4_tch", "s5_ltg", "s6_glu"]
    assert [row.name for row in table.coefficients] == names
    got = {
        field: np.array([getattr(row, field) for row in table.coefficients], dtype=float)
        for field in ("estimate", "std_error", "z", "p_value", "ci_low", "ci_high")
    }
    order = np.random.default_rng(0).permutation(len(raw_y))
    for rows in (np.arange(len(raw_y)), order):  # file order, and a random permutation
        ols = sm.OLS(raw_y[rows], sm.add_constant(raw_x[rows])).fit()
        interval = ols.conf_int(alpha=0.05)
        np.testing.assert_allclose(got["estimate"], ols.params, rtol=1e-8)
        np.testing.assert_allclose(got["std_error"], ols.bse, rtol=1e-8)
        np.testing.assert_allclose(got["z"], ols.tvalues, rtol=1e-8)  # t statistics
        np.testing.assert_allclose(got["p_value"], ols.pvalues, rtol=1e-8)
        np.testing.assert_allclose(got["ci_low"], interval[:, 0], rtol=1e-8)
        np.testing.assert_allclose(got["ci_high"], interval[:, 1], rtol=1e-8)
        assert table.log_likelihood == pytest.approx(ols.llf, rel=1e-8)
        assert table.aic == pytest.approx(ols.aic, rel=1e-8) and table.bic == pytest.approx(ols.bic, rel=1e-8)


# ------------------------------------------------------------------------------------------------ 3. huber


@pytest.fixture(scope="module")
def huber_fit(tmp_path_factory) -> dict:
    """scikit-learn's HuberRegressor on the diabetes rows (standardized features, raw target), and gradfit's linear
    Huber run with huber_delta = epsilon * sigma and l2 = alpha * sigma / n from its fitted scale sigma."""
    x, y = training_rows(make_config(*ALL_ROWS, path=LINEAR))
    n, eps, alpha = len(y), 1.35, 1.0
    huber = sklearn_linear.HuberRegressor(epsilon=eps, alpha=alpha, tol=1e-12, max_iter=100_000).fit(x, y)
    sigma = float(huber.scale_)
    delta, l2 = eps * sigma, alpha * sigma / n
    config = make_config(
        "model.loss=huber", f"model.huber_delta={delta!r}", f"model.l2={l2!r}", *ALL_ROWS, *EXACT, path=LINEAR
    )
    summary = fit(config, out_dir=tmp_path_factory.mktemp("huber") / "runs")
    return {"x": x, "y": y, "huber": huber, "delta": delta, "l2": l2, "summary": summary}


def test_huber_equals_scikit_learn_huber_regressor_at_its_fitted_scale(huber_fit):
    """A documented convention difference, not a disagreement: scikit-learn's HuberRegressor estimates a scale sigma
    jointly with the coefficients, while gradfit takes ``huber_delta`` in the target's units. At its fitted sigma the
    two objectives have the same minimizer:

    sklearn minimizes sum_i (sigma + sigma H_eps(r_i / sigma)) + alpha ||w||^2, with H_eps(z) = z^2 for |z| < eps,
    2 eps |z| - eps^2 beyond. With delta = eps sigma: sigma H(r / sigma) = r^2 / sigma = (2 / sigma) (1/2) r^2 for
    |r| < delta, and 2 eps |r| - eps^2 sigma = (2 / sigma) delta (|r| - delta / 2) beyond, i.e. (2 / sigma)
    huber_delta(r). So for fixed sigma its objective is n sigma + (2n / sigma) [mean huber_delta(r_i) +
    (alpha sigma / (2n)) ||w||^2]: ours with huber_delta = eps sigma and l2 = alpha sigma / n.

    Tolerance: HuberRegressor's ``tol`` sets only L-BFGS-B's gradient test; scipy's default relative-decrease test
    (ftol ~2.2e-9) stops it first (after 17 iterations with scikit-learn 1.9), so its coefficients are good to
    ~1e-5 only. Measured: predictions 4.4e-5 relative at most (asserted 2e-4); the objective 7e-10 relative,
    gradfit's the lower one.
    """
    x, y, huber, delta, l2 = (huber_fit[k] for k in ("x", "y", "huber", "delta", "l2"))
    summary = huber_fit["summary"]
    assert 0.1 < np.mean(np.abs(y - huber.predict(x)) > delta) < 0.9  # both branches of the loss matter
    assert summary.stop_reason.startswith("converged")
    run = load_run(summary.run_dir)
    np.testing.assert_allclose(run.predictions()(x), huber.predict(x), rtol=2e-4)
    coef = run.target_scale[1] * np.asarray(run.params["w"])  # in the target's units, as sklearn's
    assert np.max(np.abs(coef - huber.coef_)) <= 2e-4 * np.max(np.abs(huber.coef_))  # measured 4.3e-5

    def objective(w, b):  # ours, in the target's units
        size = np.abs(y - x @ w - b)
        return np.mean(np.where(size <= delta, 0.5 * size**2, delta * (size - 0.5 * delta))) + l2 / 2 * w @ w

    at_sklearn = objective(huber.coef_, huber.intercept_)
    assert summary.objective == pytest.approx(at_sklearn, rel=1e-8)
    assert summary.objective <= at_sklearn * (1 + 1e-12)  # gradfit's optimum is no worse than sklearn's point


# ------------------------------------------------------------------------------------------------ 4. gradients

GRADIENT_CASES = {
    "linear-squared": ("model.l2=0.03",),
    "linear-huber": ("model.loss=huber", "model.huber_delta=20", "model.l2=0.03"),  # delta ~ 0.26 std
    "mlp-squared": (
        "model.kind=mlp",
        "model.loss=squared",
        "model.hidden=[8]",
        "model.activation=tanh",
        "model.l2=0.01",
    ),
    "mlp-huber": (
        "model.kind=mlp",
        "model.loss=huber",
        "model.huber_delta=20",
        "model.hidden=[8]",
        "model.activation=tanh",
        "model.l2=0.01",
    ),
}


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree_util.tree_leaves(tree)])


def random_point(point: problem.Problem, seed: int = 0):
    """(params, x, y) in float64: a seeded random point of the config's parameter shapes, the training rows."""
    rng = np.random.default_rng(seed)
    with FLOAT64.scope():
        params, (x, y) = point.cast(np.float64)
        params = jax.tree_util.tree_map(lambda leaf: jax.numpy.asarray(0.5 * rng.standard_normal(leaf.shape)), params)
    return params, x, y


def numpy_outputs(params, x: np.ndarray) -> np.ndarray:
    """The model's output per row, written out in NumPy: x w + b, or the tanh MLP's forward pass."""
    if "w" in params:
        return x @ np.asarray(params["w"]) + float(params["b"])
    a = x
    layers = params["layers"]
    for i, layer in enumerate(layers):
        a = a @ np.asarray(layer["w"]) + np.asarray(layer["b"])
        a = np.tanh(a) if i < len(layers) - 1 else a
    return a[:, 0]


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_hand_derived_gradient_equals_autodiff(case):
    """At a random point, in float64: the training objective is the documented one (mean squared or Huber loss of
    the standardized target, delta = huber_delta / std, plus (l2/2) of the squared weights), and
    hand_derived_gradient(model, target_std) equals jax.grad of it to 1e-10 (measured 1.6e-15 absolute at most)."""
    config = make_config(*GRADIENT_CASES[case], "runtime.precision=float64", path=LINEAR)
    point = problem.from_config(config)
    std = load_dataset(config).target_scale[1]
    params, x, y = random_point(point)
    with FLOAT64.scope():
        value = float(point.loss_fn(params, x, y))
        auto = flat(jax.grad(point.loss_fn)(params, x, y))
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    size = np.abs(y - numpy_outputs(params, x))
    if config.model.resolved_loss == "huber":
        delta = config.model.huber_delta / std
        assert 0 < np.mean(size > delta) < 1  # rows on both branches of the loss
        losses = np.where(size <= delta, 0.5 * size**2, delta * (size - 0.5 * delta))
    else:
        losses = 0.5 * size**2
    weights = [params["w"]] if "w" in params else [layer["w"] for layer in params["layers"]]
    penalty = config.model.l2 / 2 * sum(float(np.sum(np.asarray(w) ** 2)) for w in weights)
    assert value == pytest.approx(np.mean(losses) + penalty, rel=1e-12)

    hand = flat(hand_derived_gradient(config.model, std)(params, x, y))
    np.testing.assert_allclose(hand, auto, rtol=0, atol=1e-10)
    assert np.max(np.abs(auto)) > 1e-2  # not a trivial zero gradient


def test_compare_grads_passes_on_a_linear_huber_config(tmp_path):
    out = tmp_path / "check.json"
    result = invoke(
        "compare-grads", LINEAR, "--set", "model.loss=huber", "--set", "model.huber_delta=20", "--json-out", out
    )
    assert result.exit_code == 0, result.output
    assert "verdict: PASS" in result.output
    report = json.loads(out.read_text())
    assert report["verdict"] == "pass" and report["num_params"] == 11
    for group in report["groups"]:
        assert group["errors"]["manual"] < 1e-12 and group["errors"]["forward"] < 1e-12


def test_planted_errors_in_the_linear_squared_gradient_are_caught():
    """A 1e-4 relative error in one entry of the autodiff gradient (a wrong derivative rule) is found by finite
    differences and located; a hand-derived gradient 0.1% off in one entry fails against autodiff; and a Huber
    gradient that forgets to divide huber_delta by the target's std (a units bug) fails too."""
    config = make_config("model.l2=0.03", "runtime.precision=float64", path=LINEAR)
    point = problem.from_config(config)
    params, x, y = random_point(point)
    options = CheckOptions(full=True)

    clean = check_gradient(point.loss_fn, params, point.manual_grad, options, args=point.args)
    assert clean.verdict == "pass"

    index = 1 + 4  # w[4]: b comes first in ravel order (keys sorted), then w
    report = check_gradient(planted_error(point.loss_fn, index, 1e-4), params, None, options, args=point.args)
    assert report.verdict == "fail"
    (failing,) = [g for g in report.groups if g.verdict == FAIL]
    assert failing.name == "w" and failing.methods["finite_difference"].worst == "[4]"

    def off_by_a_bit(p):
        grads = point.manual_grad(p)
        grads["w"] = np.asarray(grads["w"]).copy()
        grads["w"][7] *= 1.001
        return grads

    report = check_gradient(point.loss_fn, params, off_by_a_bit, options, args=point.args)
    assert report.verdict == "fail"
    (failing,) = [g for g in report.groups if g.verdict == FAIL]
    assert failing.name == "w" and failing.methods["manual"].verdict == FAIL

    huber = make_config("model.loss=huber", "model.huber_delta=20", "runtime.precision=float64", path=LINEAR)
    point = problem.from_config(huber)
    params, x, y = random_point(point)
    unscaled = hand_derived_gradient(huber.model, 1.0)  # delta taken in standardized units: wrong
    report = check_gradient(
        point.loss_fn, params, lambda p: unscaled(p, np.asarray(x), np.asarray(y)), options, args=point.args
    )
    assert report.verdict == "fail"


# ------------------------------------------------------------------------------------------------ 5. the CLI


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory) -> Path:
    """configs/linear.yaml trained through ``gradfit train``."""
    out = tmp_path_factory.mktemp("linear") / "runs"
    result = invoke("train", LINEAR, "--out-dir", out, "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


REGRESSION_METRICS = {"train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"}
TEST_METRICS = {"test_loss", "test_rmse", "test_mae", "test_r2"}


def test_cli_train_reports_regression_metrics_in_the_targets_units(linear_run):
    summary = json.loads((linear_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "linear"
    final = summary["final"]
    assert set(final) == REGRESSION_METRICS | TEST_METRICS
    assert all(isinstance(final[k], float) and np.isfinite(final[k]) for k in final)
    for record in [summary["final"], summary["best"], *read_metrics(linear_run)]:
        assert not any("accuracy" in key for key in record)
    assert 0.3 < final["val_r2"] < 1 and 0.3 < final["test_r2"] < 1
    assert final["val_loss"] == pytest.approx(0.5 * final["val_rmse"] ** 2, rel=1e-12)  # l2 = 0: (1/2) MSE

    # the test metrics against scikit-learn on the run's test split, predicted through the API
    run = load_run(linear_run)
    data = load_dataset(run.config)
    mean, std = data.target_scale
    truth = mean + std * np.asarray(data.test.y, np.float64)
    predicted = run.predictions()(np.asarray(data.test.x, np.float64))
    mse = sklearn_metrics.mean_squared_error(truth, predicted)
    assert final["test_rmse"] == pytest.approx(np.sqrt(mse), rel=1e-12)
    assert final["test_mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(truth, predicted), rel=1e-12)
    assert final["test_r2"] == pytest.approx(sklearn_metrics.r2_score(truth, predicted), rel=1e-12)
    assert final["test_loss"] == pytest.approx(0.5 * mse, rel=1e-12)

    result = invoke("eval", linear_run, "--json")  # the test split by default
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["rows"] == len(truth)
    for key in ("rmse", "mae", "r2"):
        assert metrics[key] == pytest.approx(final[f"test_{key}"], rel=1e-12)


def test_cli_predict_writes_line_and_prediction(linear_run):
    result = invoke("predict", linear_run, DIABETES)
    assert result.exit_code == 0, result.output
    header, *rows = list(csv.reader(io.StringIO(result.stdout)))
    assert header == ["line", "prediction"] and len(rows) == 442
    assert [int(r[0]) for r in rows] == list(range(2, 444))  # the file's lines, the header being line 1
    raw_x, _ = raw_diabetes()
    np.testing.assert_allclose([float(r[1]) for r in rows], load_run(linear_run).predict(raw_x), rtol=1e-12)

    proba = invoke("predict", linear_run, DIABETES, "--proba")
    assert proba.exit_code == 2
    assert "numeric target" in proba.stderr and "Traceback" not in proba.output


def test_cli_eval_on_a_file_equals_scikit_learn_metrics(linear_run):
    result = invoke("eval", linear_run, "--data", DIABETES, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    raw_x, raw_y = raw_diabetes()
    predicted = load_run(linear_run).predict(raw_x)
    mse = sklearn_metrics.mean_squared_error(raw_y, predicted)
    assert metrics["rows"] == 442
    assert metrics["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-12)
    assert metrics["mse"] == pytest.approx(mse, rel=1e-12)
    assert metrics["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(raw_y, predicted), rel=1e-12)
    assert metrics["r2"] == pytest.approx(sklearn_metrics.r2_score(raw_y, predicted), rel=1e-12)
    assert metrics["target_mean"] == pytest.approx(raw_y.mean(), rel=1e-12)


def test_cli_inference_refuses_mlp_and_huber_runs(linear_run, huber_fit, tmp_path):
    result = invoke("inference", linear_run)  # least squares: a table
    assert result.exit_code == 0, result.output
    assert "P>|t|" in result.output

    mlp = fit(make_config("train.epochs=1", path=CONFIGS / "mlp-regression.yaml"), out_dir=tmp_path / "mlp")
    result = invoke("inference", mlp.run_dir)
    assert result.exit_code == 2
    assert "MLP" in result.stderr and "Traceback" not in result.output

    huber = huber_fit["summary"]  # a linear model with the huber loss
    result = invoke("inference", huber.run_dir)
    assert result.exit_code == 2
    assert "squared" in result.stderr and "Traceback" not in result.output
    with pytest.raises(GradfitError, match="squared"):
        load_run(huber.run_dir).inference()


# ------------------------------------------------------------------------------------------------ 6. errors

CONFIG_ERRORS = [
    (("model.kind=linear", "model.loss=log"), "model.loss"),
    (("model.kind=logistic", "model.loss=squared"), "model.loss"),
    (("model.kind=linear", "model.loss=squared", "model.huber_delta=2.0"), "model.huber_delta"),
    (("model.kind=mlp", "model.huber_delta=2.0"), "model.huber_delta"),  # mlp's auto loss is log
    (("model.kind=linear", "train.early_stopping={monitor: val_accuracy, patience: 3}"), "val_accuracy"),
    (("model.kind=logistic", "train.early_stopping={monitor: val_rmse, patience: 3}"), "val_rmse"),
    (("model.kind=linear", "model.loss=huber", "model.huber_delta=0"), "model.huber_delta"),
]


@pytest.mark.parametrize("overrides,message", CONFIG_ERRORS)
def test_inconsistent_regression_configs_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make_config("data.source=diabetes", *overrides)


@pytest.mark.parametrize("overrides,message", [CONFIG_ERRORS[0], CONFIG_ERRORS[4]])
def test_cli_train_exits_2_on_an_inconsistent_config(overrides, message, tmp_path):
    args = [a for o in overrides for a in ("--set", o)]
    result = invoke("train", LINEAR, *args, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_a_text_target_is_not_a_numeric_target(tmp_path):
    config = make_config("data.source=breast_cancer", "model.kind=linear")
    with pytest.raises(DataError, match="numeric target") as caught:
        load_dataset(config)
    assert "'target'" in str(caught.value)
    result = invoke("train", LINEAR, "--set", "data.source=breast_cancer", "--out-dir", tmp_path)
    assert result.exit_code == 2
    assert "'target'" in result.stderr and "numeric target" in result.stderr


# ------------------------------------------------------------------------------------------------ 7. streaming

SYNTHETIC = (
    "data.source=synthetic",
    "data.synthetic.n_samples=5000",
    "data.synthetic.n_features=5",
    "model.kind=linear",
    "runtime.precision=float64",
    "train.epochs=2",
    "train.batch_size=100",
    "train.shuffle=full",
    "optimizer={name: adam, learning_rate: 0.05}",
)


def test_streamed_regression_equals_in_memory(tmp_path):
    """Synthetic y = x w + N(0, 1): a good fit has RMSE ~1 (the noise) and R^2 well above 0.5. Streamed and in-memory
    training give the same validation RMSE to 1e-6 relative (measured: equal to ~1e-16)."""
    memory_config = make_config(*SYNTHETIC, "data.in_memory=true")
    streamed_config = make_config(*SYNTHETIC, "data.in_memory=false")
    assert not load.decide(memory_config) and load.decide(streamed_config)
    memory = fit(memory_config, out_dir=tmp_path / "memory")
    streamed = fit(streamed_config, out_dir=tmp_path / "streamed")
    for summary in (memory, streamed):
        assert summary.status == "completed"
        assert summary.final["val_r2"] > 0.5
        assert summary.final["val_rmse"] == pytest.approx(1.0, abs=0.1)
    assert streamed.final["val_rmse"] == pytest.approx(memory.final["val_rmse"], rel=1e-6)
    assert streamed.final["test_rmse"] == pytest.approx(memory.final["test_rmse"], rel=1e-6)
    scales = [load_run(s.run_dir).target_scale for s in (memory, streamed)]
    np.testing.assert_allclose(scales[0], scales[1], rtol=1e-12)


def test_a_sweep_of_a_numeric_target_ranks_by_val_rmse_and_the_runs_commands_show_it(tmp_path):
    """A sweep over model.l1 (traced) and model.loss (a program key) ranks by val_rmse, lowest first; runs,
    compare and plot show the numeric target's metrics and no accuracy."""
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "name: sw\ndata:\n  source: diabetes\nmodel:\n  kind: linear\noptimizer:\n  name: adam\n"
        "  learning_rate: 0.05\ntrain:\n  epochs: 20\n  batch_size: 64\n"
        "sweep:\n  grid:\n    model.l1: [0.0, 0.5]\n    model.loss: [squared, huber]\n"
    )
    swept = invoke("sweep", config, "--out-dir", tmp_path / "runs", "--json")
    assert swept.exit_code == 0, swept.output
    state = json.loads(swept.stdout)
    assert state["metric"] == "val_rmse"
    means = [row["mean"] for row in state["ranking"]]
    assert means == sorted(means) and len(means) == 4  # lower RMSE ranks first
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    members = sorted((sweep_dir / "members").iterdir())
    listed = invoke("runs", tmp_path / "runs", "--json", "--sort", "val_rmse", "--members")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["val_rmse"] for row in rows] == sorted(row["val_rmse"] for row in rows)
    assert all(row["val_accuracy"] is None and row["test_rmse"] > 0 for row in rows)
    table = invoke("runs", tmp_path / "runs")
    assert "val_rmse" in table.stdout and "val_acc" not in table.stdout
    compared = invoke("compare", members[0], members[1], "--json")
    assert compared.exit_code == 0, compared.output
    metrics = json.loads(compared.stdout)["metrics"]
    assert {"val_rmse", "val_mae", "val_r2", "test_rmse"} <= set(metrics) and "val_accuracy" not in metrics
    pytest.importorskip("matplotlib")
    plotted = invoke("plot", *members, "--out", tmp_path / "curves.png")
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "curves.png").stat().st_size > 0
    wrong = invoke("plot", members[0], "--metric", "val_accuracy", "--out", tmp_path / "none.png")
    assert wrong.exit_code == 2 and "val_rmse" in wrong.output  # says which metrics the run has
