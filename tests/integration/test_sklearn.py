"""gradfit.sklearn: the estimators in a Pipeline and GridSearchCV, against scikit-learn's LogisticRegression and
Ridge, against ``gradfit.fit`` of the same settings (the same numbers), and with programs kept for reuse.
scikit-learn's own estimator checks are in test_sklearn_checks.py."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import gradfit
from gradfit.sklearn import GradfitClassifier, GradfitRegressor
from tests.conftest import CONFIGS, ROOT


def breast_cancer() -> tuple[pd.DataFrame, pd.Series]:
    table = pd.read_csv(ROOT / "data" / "breast_cancer.csv")
    return table.drop(columns="target"), table["target"]


def test_fit_gives_the_numbers_of_gradfit_train_for_the_same_settings(tmp_path):
    """configs/logreg.yaml trained by gradfit.fit on the built-in CSV and by the estimator on the same rows as a
    DataFrame: the same split (none), the same parameters, bit for bit."""
    config = CONFIGS / "logreg.yaml"
    summary = gradfit.fit(config, {"data.val_fraction": 0, "data.test_fraction": 0}, out_dir=tmp_path / "runs")
    run = gradfit.load_run(summary.run_dir)
    X, y = breast_cancer()
    model = GradfitClassifier(config=str(config), validation_fraction=0).fit(X, y)  # the config sets 0.2
    assert model.n_iter_ == summary.steps
    assert run.classes == ["benign", "malignant"] == list(model.classes_)
    np.testing.assert_array_equal(np.asarray(model._run.params["w"]), np.asarray(run.params["w"]))
    np.testing.assert_array_equal(model.predict_proba(X), run.predict_proba(X))
    assert list(model.feature_names_in_) == list(X.columns) and model.n_features_in_ == 30


def test_logistic_regression_matches_scikit_learn():
    """Full-batch float64 L-BFGS with l2 = 1/(C n) against LogisticRegression(C): the same optimum (1e-6)."""
    X, y = breast_cancer()
    X = StandardScaler().fit_transform(X)
    C = 1.0
    ours = GradfitClassifier(
        optimizer="lbfgs", l2=1 / (C * len(y)), steps=500, tol=1e-10, precision="float64", standardize=False
    ).fit(X, y)
    theirs = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), atol=1e-4)


def test_regressor_matches_ridge_and_scores_r2():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    alpha = 5.0
    ours = GradfitRegressor(
        optimizer="lbfgs", l2=alpha / len(y), steps=500, tol=1e-10, precision="float64", standardize=False
    ).fit(X, y)
    theirs = Ridge(alpha=alpha).fit(X, y)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-8, atol=1e-6)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), abs=1e-10)


def test_grid_search_over_a_pipeline_picks_by_cross_validation():
    X, y = breast_cancer()
    pipeline = make_pipeline(StandardScaler(), GradfitClassifier(optimizer="lbfgs", steps=50))
    search = GridSearchCV(pipeline, {"gradfitclassifier__l2": [1e-4, 1.0]}, cv=3).fit(X, y)
    light, heavy = search.cv_results_["mean_test_score"]  # measured: 0.961 and 0.925
    assert light > 0.95 and heavy < light  # a heavy penalty underfits
    assert search.best_params_ == {"gradfitclassifier__l2": 1e-4}
    assert search.score(X, y) > 0.95


def test_pickle_round_trips_predictions_exactly():
    X, y = breast_cancer()
    model = GradfitClassifier(model="mlp", hidden=(8,), optimizer="adam", epochs=5, batch_size=64).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    assert again.get_params() == model.get_params()


def test_data_frames_keep_their_categories_and_missing_cells():
    """A DataFrame's text column is one-hot encoded and a missing cell imputed, as from a file."""
    rng = np.random.default_rng(0)
    n = 300
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(size=n)
    y = np.where((colour == "red") ^ (size > 0), "yes", "no")
    X = pd.DataFrame({"colour": colour, "size": size})
    X.loc[3, "size"] = np.nan
    model = GradfitClassifier(
        model="mlp", hidden=(16,), optimizer="lbfgs", steps=200, categorical="auto", missing="mean"
    ).fit(X, y)
    assert list(model.classes_) == ["no", "yes"]
    assert model._run.feature_names == ["colour=blue", "colour=green", "colour=red", "size"]
    assert model.score(X, y) > 0.95  # measured: 1.0 (an interaction of the category and the sign of size)


def test_gradfit_errors_are_value_errors_naming_the_problem():
    X, y = breast_cancer()
    with pytest.raises(ValueError, match="optimizer.name"):
        GradfitClassifier(optimizer="adamm").fit(X, y)
    with pytest.raises(ValueError, match="holds"):
        GradfitClassifier().fit(X.assign(label=["a"] * len(X)), y)
    with pytest.raises(ValueError, match="weighs 0"):
        GradfitClassifier().fit(X, y, sample_weight=np.where(y == "malignant", 0.0, 1.0))


def test_out_dir_writes_a_run_gradfit_can_load(tmp_path):
    X, y = breast_cancer()
    model = GradfitClassifier(optimizer="lbfgs", steps=20, out_dir=tmp_path / "runs").fit(X, y)
    run = gradfit.load_run(model.run_dir_)
    np.testing.assert_array_equal(run.predict_proba(X), model.predict_proba(X))
    assert clone(model).get_params()["out_dir"] == tmp_path / "runs"


REUSED = {
    "logistic-lbfgs": (GradfitClassifier, {"optimizer": "lbfgs", "steps": 30, "l2": 1e-3}),
    "mlp-adam-minibatch": (
        GradfitClassifier,
        {"model": "mlp", "hidden": (8,), "epochs": 3, "batch_size": 16, "class_weight": "balanced"},
    ),
    "linear-huber-l1": (GradfitRegressor, {"loss": "huber", "l1": 0.01, "optimizer": "adam", "steps": 40}),
}


@pytest.mark.parametrize("kind", REUSED)
def test_programs_kept_for_reuse_give_the_numbers_of_programs_compiled_afresh(kind):
    """A fit that reuses the programs of a fit on other rows of the same shape ends with the parameters a fit
    compiling its own has, bit for bit; a numeric target of another scale (its programs differ) compiles anew."""
    from gradfit.training import loop

    estimator, settings = REUSED[kind]
    rng = np.random.default_rng(1)
    X, other = rng.normal(size=(120, 5)), rng.normal(size=(120, 5))
    if estimator is GradfitRegressor:
        y = X @ np.arange(1.0, 6.0) + rng.normal(size=120)
        y_other = -y  # the same standard deviation, bit for bit: the same programs
    else:
        y, y_other = np.where(X[:, 0] + X[:, 1] > 0, "a", "b"), np.where(other[:, 2] > 0, "a", "b")
    weights = rng.uniform(0.5, 2.0, size=120)
    model = estimator(**settings)
    config, rows = gradfit.api.in_memory(model._config(), X, y, weights)
    fresh = loop.train(config, None, None, rows)  # compiles its own programs, keeps none
    model.fit(other, y_other, sample_weight=weights)  # keeps its programs
    model.fit(X, y, sample_weight=weights)
    assert model.summary_.compile_cache == "reused"
    for name, value in gradfit.core.models.named_leaves(fresh.params).items():
        np.testing.assert_array_equal(model._state[2][name], np.asarray(value), err_msg=name)
    if estimator is GradfitRegressor:  # another target scale: other programs
        assert model.fit(X, y * 10, sample_weight=weights).summary_.compile_cache != "reused"


def test_a_refit_with_more_classes_compiles_its_own_programs():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 4))
    model = GradfitClassifier(epochs=3).fit(X, rng.integers(0, 3, 90))
    model.fit(X, rng.integers(0, 4, 90))  # the same arrays' shapes, one more output
    assert model.summary_.compile_cache != "reused" and model.predict_proba(X).shape == (90, 4)


def test_labels_and_kinds_are_checked_for_what_each_estimator_fits():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3))
    labels = np.where(X[:, 0] > 0, "1", "0")  # text that gradfit reads as numbers: still scikit-learn's classes
    model = GradfitClassifier(optimizer="lbfgs", steps=30).fit(X, labels)
    assert list(model.classes_) == ["0", "1"] and set(model.predict(X)) <= {"0", "1"}
    assert model.score(X, labels) > 0.9
    y = X @ np.array([1.0, -2.0, 0.5])
    assert GradfitRegressor(model="mlp", hidden=(8,), steps=5).fit(X, y).config_.model.resolved_loss == "squared"
    with pytest.raises(ValueError, match="GradfitClassifier fits classes"):
        GradfitClassifier(model="linear").fit(X, labels == "1")
    with pytest.raises(ValueError, match="GradfitRegressor fits a numeric target"):
        GradfitRegressor(model="logistic").fit(X, y)


def test_a_failed_refit_leaves_an_unfitted_estimator():
    from sklearn.exceptions import NotFittedError

    X, y = breast_cancer()
    model = GradfitClassifier(optimizer="lbfgs", steps=10).fit(X, y)
    with pytest.raises(ValueError, match="weighs 0"):
        model.fit(X, y, sample_weight=np.where(y == "malignant", 0.0, 1.0))
    with pytest.raises(NotFittedError):
        model.predict(X)
