"""Row weights (data.weight, a column of sample weights; model.class_weight, balanced or per label) against the
reference libraries.

- logistic regression: scikit-learn's ``LogisticRegression(C = 1/(l2 n), sample_weight=..., class_weight=...)``
  objective, binary and multinomial; weighted ridge: ``Ridge(alpha = l2 n).fit(..., sample_weight=...)``;
- the hand-derived gradients with weights against JAX autodiff (logistic, multinomial, linear squared and Huber, MLP);
- streaming (a converted folder, streamed synthetic rows) against the same run in memory;
- ``gradfit eval`` (weighted metrics against scikit-learn's ``sample_weight``), ``gradfit predict``, the API;
- the data and config errors, and weights of 1 changing nothing.

The weighted files are the built-in CSVs with a column ``w`` of seeded uniform(0.2, 3) weights appended to each line
(every other cell stays as the file writes it).
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
from gradfit.config.schema import data_seed
from gradfit.core.losses import hand_derived_gradient, make_objective, row_loss_of
from gradfit.core.models import build_model
from gradfit.data import streamed as stream
from gradfit.data.convert import convert
from gradfit.data.dataset import load_dataset, split_indices
from gradfit.errors import ConfigError, DataError
from gradfit.gradients.checked_point import FLOAT64
from gradfit.training.loop import fit
from gradfit.training.prepare import target_std

sklearn_linear = pytest.importorskip("sklearn.linear_model")
sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_utils = pytest.importorskip("sklearn.utils")
threadpoolctl = pytest.importorskip("threadpoolctl")

runner = CliRunner()
LOGREG, LINEAR = CONFIGS / "logreg.yaml", CONFIGS / "linear.yaml"
ALL_ROWS = ("data.val_fraction=0", "data.test_fraction=0")  # every row in the training split
EXACT = ("runtime.precision=float64", "train.tol=1e-12", "train.steps=1000")  # L-BFGS run to the optimum
L2 = 0.01


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """scikit-learn's solvers and NumPy on one BLAS thread: OpenBLAS's threads spinning beside JAX's on a small
    machine made a 0.1 s multinomial fit take 3 to 12 s."""
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def weighted_copy(name: str, path: Path, seed: int, edit=None) -> tuple[Path, np.ndarray]:
    """data/NAME.csv with a column ``w`` of seeded uniform(0.2, 3) weights appended: (the file, the weights).
    ``edit(row, weight_text) -> weight_text`` may change a row's weight cell (row 0 is the first data row)."""
    lines = (ROOT / "data" / f"{name}.csv").read_text(encoding="utf-8").splitlines()
    weights = np.random.default_rng(seed).uniform(0.2, 3.0, len(lines) - 1)
    cells = [repr(float(w)) for w in weights]
    if edit is not None:
        cells = [edit(i, cell) for i, cell in enumerate(cells)]
    path.write_text("\n".join([f"{lines[0]},w", *(f"{a},{b}" for a, b in zip(lines[1:], cells))]) + "\n")
    return path, weights


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The weighted copies of the three built-in files (seeds 0, 1, 2)."""
    folder = tmp_path_factory.mktemp("weighted")
    names = ("breast_cancer", "digits", "diabetes")
    return {name: weighted_copy(name, folder / f"{name}.csv", seed)[0] for seed, name in enumerate(names)}


def on_file(path: Path, *overrides: str, config: Path = LOGREG, weight: bool = True):
    """A config training on a weighted file: with data.weight=w, or (``weight`` False) with the column dropped."""
    return make_config(
        "data.source=file", f"data.path={path}", "data.weight=w" if weight else "data.drop=[w]", *overrides, path=config
    )


def rows_and_weights(config) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """(standardized training features, labels, weights, the dataset): labels ±1 or class ids, or the target in
    the target's units; weights as the objective takes them (sample weight times class weight)."""
    data = load_dataset(config)
    y = np.asarray(data.train.y, np.float64)
    assert y.ndim == 2 and y.shape[1] == 2  # weighted rows travel as (label, weight) pairs
    labels, weights = y[:, 0], y[:, 1]
    if data.target_scale is not None:
        mean, std = data.target_scale
        labels = mean + std * labels
    return np.asarray(data.train.x, np.float64), labels, weights, data


def raw_weights(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """The file's ``w`` column (in file order, or of ``rows``)."""
    with open(path, encoding="utf-8") as f:
        weights = np.array([float(row["w"]) for row in csv.DictReader(f)])
    return weights if rows is None else weights[rows]


# ------------------------------------------------------------------------------------------------ 1. binary logistic

BINARY_CASES = {
    "sample-weight": (True, None),
    "balanced": (False, "balanced"),
    "sample-weight-and-balanced": (True, "balanced"),
    "per-label": (False, {"benign": 0.5, "malignant": 2.5}),
    "sample-weight-and-per-label": (True, {"malignant": 3.0}),
}


@pytest.mark.parametrize("case", list(BINARY_CASES))
def test_binary_logistic_objective_equals_scikit_learn_weighted(case, files, out_dir):
    """sklearn minimizes C sum_i s_i c_{y_i} loss_i + ||w||^2 / 2 (s: sample_weight, c: class_weight, balanced from
    compute_class_weight with the sample weights): ours, mean_i(s_i c_{y_i} loss_i) + (l2/2) ||w||^2, times C n when
    C = 1 / (l2 n). Measured: 5e-14 to 3e-13 relative; the weights 0 to 1 ulp from sklearn's; coefficients 6e-7."""
    sampled, class_weight = BINARY_CASES[case]
    extra = () if class_weight is None else (f"model.class_weight={json.dumps(class_weight)}",)
    config = on_file(files["breast_cancer"], f"model.l2={L2}", *ALL_ROWS, *EXACT, *extra, weight=sampled)
    summary = fit(config, out_dir=out_dir)
    assert summary.status == "completed" and summary.stop_reason.startswith("converged")
    x, labels, weights, data = rows_and_weights(config)
    n = len(labels)
    assert n == 569 and data.classes == ("benign", "malignant") and set(labels) == {-1.0, 1.0}
    assert x.shape == (569, 30) and "w" not in data.feature_names
    text = np.where(labels > 0, "malignant", "benign")

    # the rows' weights are the sample weights times sklearn's class weights
    sample = None
    if sampled:
        order = split_indices(n, 0, 0, data_seed(config))[0]  # the training split: a permutation of the file
        sample = raw_weights(files["breast_cancer"], order)
    per_class = np.ones(2)
    if class_weight is not None:
        per_class = sklearn_utils.compute_class_weight(
            class_weight, classes=np.array(["benign", "malignant"]), y=text, sample_weight=sample
        )
        assert data.weighting.classes == pytest.approx(per_class, rel=1e-14)
    expected = (1.0 if sample is None else sample) * per_class[(labels > 0).astype(int)]
    np.testing.assert_allclose(weights, expected, rtol=1e-15)
    assert data.weighting.column == ("w" if sampled else None)

    clf = sklearn_linear.LogisticRegression(C=1 / (L2 * n), class_weight=class_weight, tol=1e-12, max_iter=100_000)
    clf.fit(x, text, sample_weight=sample)
    w, b = clf.coef_[0], clf.intercept_[0]
    reference = np.mean(weights * np.logaddexp(0, -labels * (x @ w + b))) + L2 / 2 * w @ w
    assert summary.objective == pytest.approx(reference, rel=1e-8)
    assert summary.objective <= reference * (1 + 1e-10)
    with np.load(Path(summary.run_dir) / "params.npz") as params:
        np.testing.assert_allclose(params["w"], w, atol=1e-5)  # the same optimum, not only its value

    recorded = json.loads((Path(summary.run_dir) / "preprocessing.json").read_text())
    assert recorded["weight"] == ("w" if sampled else None)
    assert recorded["class_weight"] == (None if class_weight is None else pytest.approx(list(per_class), rel=1e-14))


# ------------------------------------------------------------------------------------------------ 2. multinomial


def test_multinomial_objective_equals_scikit_learn_weighted(files, out_dir):
    """Softmax regression on the ten digit classes with sample weights: scikit-learn's multinomial objective
    C sum_i s_i (-log p_i[y_i]) + ||W||^2 / 2, ours times C n. Measured: 1.1e-13 relative; coefficients 4e-7."""
    config = on_file(files["digits"], f"model.l2={L2}", *ALL_ROWS, *EXACT, config=CONFIGS / "multinomial.yaml")
    summary = fit(config, out_dir=out_dir)
    assert summary.stop_reason.startswith("converged")
    x, labels, weights, data = rows_and_weights(config)
    n, y = len(labels), labels.astype(int)
    assert data.n_classes == 10 and np.array_equal(y, labels)
    np.testing.assert_array_equal(weights, raw_weights(files["digits"], split_indices(n, 0, 0, data_seed(config))[0]))
    clf = sklearn_linear.LogisticRegression(C=1 / (L2 * n), tol=1e-12, max_iter=100_000)
    clf.fit(x, y, sample_weight=weights)
    logits = x @ clf.coef_.T + clf.intercept_
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    reference = -np.mean(weights * log_probs[np.arange(n), y]) + L2 / 2 * np.sum(clf.coef_**2)
    assert summary.objective == pytest.approx(reference, rel=1e-8)
    assert summary.objective <= reference * (1 + 1e-10)
    with np.load(Path(summary.run_dir) / "params.npz") as params:
        np.testing.assert_allclose(params["w"], clf.coef_.T, atol=1e-4)


# ------------------------------------------------------------------------------------------------ 3. weighted ridge


@pytest.fixture(scope="module")
def ridge_run(files, tmp_path_factory):
    """configs/linear.yaml on the weighted diabetes file, every row in the training split, to the optimum."""
    config = on_file(files["diabetes"], f"model.l2={L2}", *ALL_ROWS, *EXACT, config=LINEAR)
    return config, fit(config, out_dir=tmp_path_factory.mktemp("ridge") / "runs")


def test_weighted_ridge_equals_scikit_learn_ridge(ridge_run, files):
    """Ridge minimizes sum_i s_i r_i^2 + alpha ||w||^2 = 2n [mean(s r^2 / 2) + (alpha / (2n)) ||w||^2]: ours with
    l2 = alpha / n, the same standardized features and the raw target. Measured: predictions 2.5e-14 relative, the
    objective 2e-16."""
    config, summary = ridge_run
    assert summary.status == "completed" and summary.stop_reason.startswith("converged")
    x, y, weights, data = rows_and_weights(config)
    n = len(y)
    assert n == 442
    np.testing.assert_array_equal(weights, raw_weights(files["diabetes"], split_indices(n, 0, 0, data_seed(config))[0]))
    ridge = sklearn_linear.Ridge(alpha=L2 * n, solver="cholesky").fit(x, y, sample_weight=weights)
    run = load_run(summary.run_dir)
    np.testing.assert_allclose(run.predictions()(x), ridge.predict(x), rtol=1e-8)
    residual = y - ridge.predict(x)
    reference = np.mean(weights * 0.5 * residual**2) + L2 / 2 * ridge.coef_ @ ridge.coef_  # in the target's units
    assert summary.objective == pytest.approx(reference, rel=1e-8)
    unweighted = sklearn_linear.Ridge(alpha=L2 * n, solver="cholesky").fit(x, y)
    assert np.max(np.abs(run.predictions()(x) - unweighted.predict(x))) > 0.1  # the weights change the fit


# ------------------------------------------------------------------------------------------------ 4. gradients

GRADIENT_CASES = {
    "logistic-binary": ("breast_cancer", LOGREG, ("model.class_weight=balanced",)),
    "logistic-multinomial": ("digits", LOGREG, ("model.class_weight=balanced",)),
    "linear-squared": ("diabetes", LINEAR, ()),
    "linear-huber": ("diabetes", LINEAR, ("model.loss=huber", "model.huber_delta=20")),
    "mlp-multinomial": ("digits", LOGREG, ("model.kind=mlp", "model.hidden=[8]", "model.activation=tanh")),
    "mlp-binary": ("breast_cancer", LOGREG, ("model.kind=mlp", "model.hidden=[8]", "model.activation=tanh")),
    "mlp-huber": (
        "diabetes",
        LINEAR,
        ("model.kind=mlp", "model.loss=huber", "model.huber_delta=20", "model.hidden=[8]", "model.activation=tanh"),
    ),
}


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree_util.tree_leaves(tree)])


def numpy_outputs(params, x: np.ndarray) -> np.ndarray:
    """The model's outputs per row in NumPy: x w + b, or the tanh MLP's forward pass ((n,) for one output)."""
    if "w" in params:
        return x @ np.asarray(params["w"]) + np.asarray(params["b"])
    a = x
    layers = params["layers"]
    for i, layer in enumerate(layers):
        a = a @ np.asarray(layer["w"]) + np.asarray(layer["b"])
        a = np.tanh(a) if i < len(layers) - 1 else a
    return a[:, 0] if a.shape[1] == 1 else a


def numpy_row_losses(config, outputs: np.ndarray, labels: np.ndarray, std: float) -> np.ndarray:
    loss = config.model.resolved_loss
    if loss == "squared":
        return 0.5 * (labels - outputs) ** 2
    if loss == "huber":
        size, delta = np.abs(labels - outputs), config.model.huber_delta / std
        assert 0 < np.mean(size > delta) < 1  # rows on both branches of the loss
        return np.where(size <= delta, 0.5 * size**2, delta * (size - 0.5 * delta))
    if outputs.ndim == 1:
        return np.logaddexp(0, -labels * outputs)
    log_probs = outputs - np.logaddexp.reduce(outputs, axis=1, keepdims=True)
    return -log_probs[np.arange(len(labels)), labels.astype(int)]


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_weighted_hand_derived_gradient_equals_autodiff(case, files):
    """At a seeded random point in float64, on the training rows as (label, weight) pairs: the training objective
    (the model and per-row loss as training builds them, ``make_objective``) is mean(weight * loss) + (l2/2) ||W||^2
    written out in NumPy (1e-12 relative), and hand_derived_gradient(model, target_std) equals jax.grad of it to
    1e-10 absolute (measured 2.2e-15 at most); the weights matter (the unweighted gradient differs)."""
    name, path, overrides = GRADIENT_CASES[case]
    config = on_file(files[name], "model.l2=0.03", "runtime.precision=float64", *overrides, config=path)
    data = load_dataset(config)
    std = target_std(data)
    model = build_model(config.model, data.n_features, data.n_classes, row_loss=row_loss_of(config.model, std))
    objective = make_objective(model.apply, config.model.l2, model.row_loss)
    x, y = np.asarray(data.train.x, np.float64), np.asarray(data.train.y, np.float64)
    assert y.shape == (len(x), 2) and len(np.unique(y[:, 1])) > 10  # (label, weight) pairs, weights that differ
    rng = np.random.default_rng(0)
    with FLOAT64.scope():
        shapes = jax.eval_shape(lambda key: model.init(key, np.float64), jax.random.PRNGKey(0))
        params = jax.tree_util.tree_map(lambda leaf: jax.numpy.asarray(0.5 * rng.standard_normal(leaf.shape)), shapes)
        value, auto = jax.jit(jax.value_and_grad(objective))(params, x, y)
        value, auto = float(value), flat(auto)

    weights = [params["w"]] if "w" in params else [layer["w"] for layer in params["layers"]]
    penalty = config.model.l2 / 2 * sum(float(np.sum(np.asarray(w) ** 2)) for w in weights)
    losses = numpy_row_losses(config, numpy_outputs(params, x), y[:, 0], std)
    assert value == pytest.approx(np.mean(y[:, 1] * losses) + penalty, rel=1e-12)

    gradient = hand_derived_gradient(config.model, std)
    hand = flat(gradient(params, x, y))
    np.testing.assert_allclose(hand, auto, rtol=0, atol=1e-10)
    assert np.max(np.abs(auto)) > 1e-2  # not a trivial zero gradient
    unweighted = flat(gradient(params, x, y[:, 0]))
    assert np.max(np.abs(unweighted - auto)) > 1e-3


# ------------------------------------------------------------------------------------------------ 5. streaming

STREAMED = (
    "runtime.precision=float64",
    f"model.l2={L2}",
    "optimizer={name: adam, learning_rate: 0.05}",
    "train.batch_size=50",
    "train.steps=60",
    "train.epochs=null",
    "train.log_every=10",
    "train.shuffle=full",
    "model.class_weight=balanced",
)


def test_streamed_weighted_folder_equals_in_memory(files, tmp_path):
    """``gradfit data convert`` keeps the weight column as a feature column; a run on the folder splits it off as it
    reads. With data.weight and class_weight balanced (from the training split's summed sample weights), the folder
    gives the CSV's split, class weights, (label, weight) rows and features (a streamed run sums its standardization
    statistics and class counts in another order: equal to 2e-15 relative, not to the bit), and the streamed run
    equals the in-memory run on the folder: objective and weighted val_loss to 1e-10 relative (measured: 2e-16).
    val_loss is mean(w * loss) over the validation rows; val_accuracy is not weighted."""
    folder = tmp_path / "converted"
    convert(files["breast_cancer"], folder)
    csv_config = on_file(files["breast_cancer"], *STREAMED, "data.in_memory=true")
    memory_config = on_file(folder, *STREAMED, "data.in_memory=true")
    streamed_config = on_file(folder, *STREAMED, "data.in_memory=false")

    on_csv, in_memory = load_dataset(csv_config), load_dataset(memory_config)  # train.shuffle full: permuted rows
    streamed_rows = stream.load_streamed(streamed_config)
    assert streamed_rows.feature_names == on_csv.feature_names and "w" not in streamed_rows.feature_names
    assert streamed_rows.weighting.column == in_memory.weighting.column == on_csv.weighting.column == "w"
    train, _, _ = split_indices(569, 0.2, 0.2, data_seed(csv_config))  # the training rows, in the split's order
    labels, sample = on_csv.train.y[:, 0], raw_weights(files["breast_cancer"], train)
    balanced = sklearn_utils.compute_class_weight(
        "balanced", classes=np.array([-1.0, 1.0]), y=labels, sample_weight=sample
    )
    for rows in (on_csv, in_memory, streamed_rows):
        np.testing.assert_allclose(rows.weighting.classes, balanced, rtol=1e-14)
    np.testing.assert_allclose(on_csv.train.y[:, 1], sample * balanced[(labels > 0).astype(int)], rtol=1e-15)
    np.testing.assert_array_equal(in_memory.mean, on_csv.mean)
    np.testing.assert_array_equal(in_memory.std, on_csv.std)
    np.testing.assert_allclose(streamed_rows.mean, on_csv.mean, rtol=1e-14)
    np.testing.assert_allclose(streamed_rows.std, on_csv.std, rtol=1e-14)
    for name in ("train", "val", "test"):
        split = getattr(on_csv, name)
        x, y = getattr(streamed_rows, name).take(np.arange(len(split)), np.float64, np.float64)
        np.testing.assert_array_equal(y[:, 0], split.y[:, 0])  # the same rows and labels
        np.testing.assert_allclose(y[:, 1], split.y[:, 1], rtol=1e-14)  # and weights
        np.testing.assert_array_equal(getattr(in_memory, name).y, split.y)
        np.testing.assert_allclose(x, split.x, rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(getattr(in_memory, name).x, split.x)

    memory = fit(memory_config, out_dir=tmp_path / "memory")
    streamed = fit(streamed_config, out_dir=tmp_path / "streamed")
    for summary in (memory, streamed):
        assert summary.status == "completed" and summary.steps == 60
    assert streamed.objective == pytest.approx(memory.objective, rel=1e-10)
    for key in ("train_loss", "val_loss", "test_loss", "val_accuracy"):
        assert streamed.final[key] == pytest.approx(memory.final[key], rel=1e-10), key

    # the weighted val_loss and the unweighted val_accuracy, from the saved parameters
    val = load_dataset(memory_config).val
    with np.load(Path(memory.run_dir) / "params.npz") as params:
        logits = np.asarray(val.x) @ params["w"] + params["b"]
    labels, weights = val.y[:, 0], val.y[:, 1]
    assert memory.final["val_loss"] == pytest.approx(np.mean(weights * np.logaddexp(0, -labels * logits)), rel=1e-10)
    assert memory.final["val_accuracy"] == np.mean(np.where(logits >= 0, 1.0, -1.0) == labels)


SYNTHETIC = (
    "data.source=synthetic",
    "data.synthetic.n_samples=2000",
    "data.synthetic.n_features=5",
    "data.synthetic.n_classes=3",
    "model.class_weight=balanced",
    "runtime.precision=float64",
    "train.epochs=2",
    "train.batch_size=100",
    "train.shuffle=full",
    "optimizer={name: adam, learning_rate: 0.05}",
)


def test_streamed_synthetic_balanced_equals_in_memory(tmp_path):
    """Synthetic data take class weights (no weight column): balanced from the training split's class counts, the
    same streamed as in memory, and the same run (objective and val_loss to 1e-10 relative; measured 2e-16)."""
    memory_config = make_config(*SYNTHETIC, "data.in_memory=true")
    streamed_config = make_config(*SYNTHETIC, "data.in_memory=false")
    memory_rows, streamed_rows = load_dataset(memory_config), stream.load_streamed(streamed_config)
    labels = memory_rows.train.y[:, 0].astype(int)
    expected = sklearn_utils.compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert np.ptp(expected) > 1e-3  # the classes are not exactly balanced: the weights differ from 1
    assert memory_rows.weighting.column is None
    np.testing.assert_allclose(memory_rows.weighting.classes, expected, rtol=1e-14)
    assert streamed_rows.weighting == memory_rows.weighting
    np.testing.assert_array_equal(memory_rows.train.y[:, 1], expected[labels])

    memory = fit(memory_config, out_dir=tmp_path / "memory")
    streamed = fit(streamed_config, out_dir=tmp_path / "streamed")
    for summary in (memory, streamed):
        assert summary.status == "completed" and summary.final["val_accuracy"] > 0.5
    assert streamed.objective == pytest.approx(memory.objective, rel=1e-10)
    assert streamed.final["val_loss"] == pytest.approx(memory.final["val_loss"], rel=1e-10)


# ------------------------------------------------------------------------------------------------ 7. eval, predict


def exact_logistic(path: Path, *overrides: str, weight: bool = True):
    """Test 1's configs: a run of the same shapes loads its programs from the compile cache."""
    return on_file(path, f"model.l2={L2}", *ALL_ROWS, *EXACT, *overrides, weight=weight)


@pytest.fixture(scope="module")
def logistic_run(files, tmp_path_factory) -> Path:
    """Logistic regression on the weighted breast-cancer file with data.weight."""
    out = tmp_path_factory.mktemp("logistic") / "runs"
    return Path(fit(exact_logistic(files["breast_cancer"]), out_dir=out).run_dir)


@pytest.fixture(scope="module")
def linear_run(ridge_run) -> Path:
    return Path(ridge_run[1].run_dir)


def features_of(path: Path):
    """The file's rows as pandas: the features (without w and the target), the labels and the weights."""
    pd = pytest.importorskip("pandas")
    table = pd.read_csv(path)
    return table.drop(columns=["w", "target"]), table["target"].to_numpy(), table["w"].to_numpy()


def eval_json(run_dir: Path, *args) -> dict:
    result = invoke("eval", run_dir, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_on_a_weighted_file_equals_scikit_learn_weighted_metrics(logistic_run, files):
    """accuracy, log loss, ROC AUC, macro F1/precision/recall and the confusion matrix (summed weights) against
    scikit-learn with sample_weight, and the API's ``evaluate(x, y, sample_weight)`` against the CLI. Measured:
    2.2e-16 relative at most (the run is float64)."""
    x, labels, weights = features_of(files["breast_cancer"])
    run = load_run(logistic_run)
    assert run.weight == "w"
    proba = run.predict_proba(x)
    predicted = np.asarray(run.classes)[proba.argmax(axis=1)]
    metrics = eval_json(logistic_run, "--data", files["breast_cancer"])
    assert metrics["weighted_by"] == "w" and metrics["rows"] == 569
    expected = {
        "accuracy": sklearn_metrics.accuracy_score(labels, predicted, sample_weight=weights),
        "log_loss": sklearn_metrics.log_loss(labels, proba, labels=run.classes, sample_weight=weights),
        "roc_auc": sklearn_metrics.roc_auc_score(labels == "malignant", proba[:, 1], sample_weight=weights),
        "f1_macro": sklearn_metrics.f1_score(labels, predicted, average="macro", sample_weight=weights),
        "precision_macro": sklearn_metrics.precision_score(labels, predicted, average="macro", sample_weight=weights),
        "recall_macro": sklearn_metrics.recall_score(labels, predicted, average="macro", sample_weight=weights),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12), key
    assert metrics["accuracy"] != pytest.approx(np.mean(predicted == labels), rel=1e-6)  # the weights count
    confusion = sklearn_metrics.confusion_matrix(labels, predicted, labels=run.classes, sample_weight=weights)
    np.testing.assert_allclose(metrics["confusion_matrix"], confusion, rtol=1e-12)
    assert [row["support"] for row in metrics["per_class"]] == pytest.approx(confusion.sum(axis=1), rel=1e-12)

    # the API: the same numbers
    api = run.evaluate(x, labels, sample_weight=weights)
    for key in ("accuracy", "log_loss", "roc_auc", "f1_macro", "precision_macro", "recall_macro"):
        assert api[key] == pytest.approx(metrics[key], rel=1e-12), key

    # the table's title says so
    table = invoke("eval", logistic_run, "--data", files["breast_cancer"])
    assert table.exit_code == 0, table.output
    assert "weighted by its 'w'" in table.output

    # a file without the weight column: unweighted metrics
    plain = eval_json(logistic_run, "--data", ROOT / "data" / "breast_cancer.csv")
    assert plain["weighted_by"] is None and plain["rows"] == 569
    assert plain["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted), rel=1e-12)
    assert plain["log_loss"] == pytest.approx(sklearn_metrics.log_loss(labels, proba, labels=run.classes), rel=1e-12)
    assert plain["roc_auc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(labels == "malignant", proba[:, 1]), rel=1e-12
    )
    assert plain["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(labels, predicted, average="macro"), rel=1e-12)
    assert "weighted by" not in invoke("eval", logistic_run, "--data", ROOT / "data" / "breast_cancer.csv").output


@pytest.mark.parametrize(
    "overrides,weight",
    [((), True), (("model.class_weight=balanced",), True), (("model.class_weight=balanced",), False)],
)
def test_eval_of_a_split_weighs_its_rows_by_their_sample_weights(overrides, weight, logistic_run, files, tmp_path):
    """``gradfit eval RUN --split train`` weighs the rows by their sample weights alone (class weights weigh the
    objective, not the data; a run with class weights only is evaluated unweighted): the training split of a run on
    every row is the file's rows in another order, so its metrics equal those of --data on the file (measured:
    7e-16 relative at most)."""
    run_dir = logistic_run
    if overrides or not weight:
        run_dir = Path(
            fit(exact_logistic(files["breast_cancer"], *overrides, weight=weight), tmp_path / "runs").run_dir
        )
    by_split = eval_json(run_dir, "--split", "train")
    by_file = eval_json(run_dir, "--data", files["breast_cancer"])
    assert by_split["weighted_by"] == by_file["weighted_by"] == ("w" if weight else None)
    assert by_split["rows"] == by_file["rows"] == 569
    for key in ("accuracy", "log_loss", "roc_auc", "f1_macro", "precision_macro", "recall_macro"):
        assert by_split[key] == pytest.approx(by_file[key], rel=1e-12), key
    np.testing.assert_allclose(by_split["confusion_matrix"], by_file["confusion_matrix"], rtol=1e-12)
    if not weight:  # the file's weight column is not the run's: counted as rows, as on the file without it
        plain = eval_json(run_dir, "--data", ROOT / "data" / "breast_cancer.csv")
        assert {**by_file, "data": None} == {**plain, "data": None}
        assert all(isinstance(count, int) for row in by_file["confusion_matrix"] for count in row)


def test_eval_of_a_weighted_regression_equals_scikit_learn(linear_run, files):
    x, y, weights = features_of(files["diabetes"])
    run = load_run(linear_run)
    predicted = run.predict(x)
    metrics = eval_json(linear_run, "--data", files["diabetes"])
    assert metrics["weighted_by"] == "w" and metrics["rows"] == 442
    mse = sklearn_metrics.mean_squared_error(y, predicted, sample_weight=weights)
    assert metrics["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-12)
    assert metrics["mse"] == pytest.approx(mse, rel=1e-12)
    assert metrics["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y, predicted, sample_weight=weights))
    assert metrics["r2"] == pytest.approx(sklearn_metrics.r2_score(y, predicted, sample_weight=weights), rel=1e-12)
    assert metrics["target_mean"] == pytest.approx(np.average(y, weights=weights), rel=1e-12)
    api = run.evaluate(x, y, sample_weight=weights)
    for key in ("rmse", "mae", "r2", "mse"):
        assert api[key] == pytest.approx(metrics[key], rel=1e-12), key
    plain = eval_json(linear_run, "--data", ROOT / "data" / "diabetes.csv")
    assert plain["weighted_by"] is None
    assert plain["r2"] == pytest.approx(sklearn_metrics.r2_score(y, predicted), rel=1e-12)
    assert plain["rmse"] == pytest.approx(np.sqrt(sklearn_metrics.mean_squared_error(y, predicted)), rel=1e-12)
    by_split = eval_json(linear_run, "--split", "train")  # every row, in another order, weighted as the file's
    assert by_split["weighted_by"] == "w"
    for key in ("rmse", "mae", "r2", "mse", "target_mean"):
        assert by_split[key] == pytest.approx(metrics[key], rel=1e-12), key


def test_evaluate_refuses_bad_sample_weights(logistic_run, files):
    x, labels, weights = features_of(files["breast_cancer"])
    run = load_run(logistic_run)
    weights = np.array(weights)
    weights[3] = -1.0
    with pytest.raises(DataError, match="sample_weight"):
        run.evaluate(x, labels, sample_weight=weights)
    with pytest.raises(DataError, match="sample_weight"):
        run.evaluate(x, labels, sample_weight=np.ones(10))


def test_predict_ignores_the_weight_column(logistic_run, files):
    weighted = invoke("predict", logistic_run, files["breast_cancer"], "--proba")
    plain = invoke("predict", logistic_run, ROOT / "data" / "breast_cancer.csv", "--proba")
    assert weighted.exit_code == 0 and plain.exit_code == 0, weighted.output + plain.output
    header, *rows = list(csv.reader(io.StringIO(weighted.stdout)))
    assert header == ["line", "prediction", "p_benign", "p_malignant"] and len(rows) == 569
    assert weighted.stdout == plain.stdout


# ------------------------------------------------------------------------------------------------ 8. errors


def train_fails(tmp_path, *overrides: str, config: Path = LOGREG):
    args = [a for o in overrides for a in ("--set", o)]
    result = invoke("train", config, *args, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    return result.stderr


def bad_weight(tmp_path, cell: str) -> Path:
    return weighted_copy("breast_cancer", tmp_path / "bad.csv", 0, lambda i, w: cell if i == 6 else w)[0]


@pytest.mark.parametrize("cell,shown", [("-0.5", "-0.5"), ("", "missing")])
def test_a_negative_or_missing_weight_names_its_line(cell, shown, tmp_path):
    path = bad_weight(tmp_path, cell)
    message = train_fails(tmp_path, "data.source=file", f"data.path={path}", "data.weight=w")
    assert f"{path}:8" in message  # the header is line 1: the 7th data row is line 8
    assert "'w'" in message and "data.weight" in message and shown in message
    with pytest.raises(DataError, match=r"data\.weight"):
        load_dataset(on_file(path))


def text_weights(tmp_path) -> Path:
    lines = (ROOT / "data" / "breast_cancer.csv").read_text().splitlines()
    path = tmp_path / "text.csv"
    path.write_text("\n".join([f"{lines[0]},w", *(f"{line},heavy" for line in lines[1:])]) + "\n")
    return path


def test_a_text_weight_column_is_refused(tmp_path):
    path = text_weights(tmp_path)
    message = train_fails(tmp_path, "data.source=file", f"data.path={path}", "data.weight=w")
    assert f"{path}:2" in message and "'w'" in message and "'heavy'" in message
    message = train_fails(tmp_path, "data.source=file", f"data.path={path}", "data.weight=w", "data.categorical=auto")
    assert "'w'" in message and "text" in message and "data.weight" in message


def test_a_text_weight_cell_is_reported_as_a_weight(tmp_path):
    path = text_weights(tmp_path)
    message = train_fails(tmp_path, "data.source=file", f"data.path={path}", "data.weight=w")
    assert "data.weight" in message and "data.categorical" not in message


def test_a_weight_column_that_does_not_exist(files, tmp_path):
    message = train_fails(tmp_path, "data.source=file", f"data.path={files['breast_cancer']}", "data.weight=weights")
    assert "'weights'" in message and "data.weight" in message
    message = train_fails(tmp_path, "data.weight=w")  # the built-in file has no column w
    assert "'w'" in message and "data.weight" in message


CONFIG_ERRORS = [
    (("data.source=file", "data.path=x.csv", "data.weight=w", "data.features=[mean_radius, w]"), "data.weight"),
    (("data.source=diabetes", "model.kind=linear", "model.class_weight=balanced"), "model.class_weight"),
    (("model.class_weight={benign: 0}",), "model.class_weight"),
    (("model.class_weight={malignant: -2}",), "model.class_weight"),
    (("data.source=synthetic", "data.weight=w"), "data.weight"),
]


@pytest.mark.parametrize("overrides,key", CONFIG_ERRORS)
def test_inconsistent_weight_configs_are_refused(overrides, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(*overrides, path=LOGREG)
    assert key in train_fails(tmp_path, *overrides)


def test_a_class_weight_label_that_is_not_a_class(tmp_path):
    with pytest.raises(DataError, match="model.class_weight") as caught:
        load_dataset(make_config("model.class_weight={benign: 1, cancer: 2}", path=LOGREG))
    assert "cancer" in str(caught.value)
    message = train_fails(tmp_path, "model.class_weight={benign: 1, cancer: 2}")
    assert "cancer" in message and "model.class_weight" in message


def test_eval_on_a_file_with_a_negative_weight_names_its_line(logistic_run, tmp_path):
    path = bad_weight(tmp_path, "-2")
    result = invoke("eval", logistic_run, "--data", path, "--json")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{path}:8" in result.stderr and "data.weight" in result.stderr and "-2" in result.stderr


def test_inference_refuses_a_weighted_run(logistic_run):
    result = invoke("inference", logistic_run)
    assert result.exit_code == 2
    assert "weigh" in result.stderr and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ 9. weights of 1


@pytest.mark.parametrize("weighting", ["column", "class_weight"])
def test_weights_of_one_change_nothing(weighting, tmp_path):
    """A weight column of ones, or class weights of 1, give the unweighted run's objective and training loss to
    1e-12 relative (measured: equal to the bit)."""
    if weighting == "column":
        path = weighted_copy("breast_cancer", tmp_path / "ones.csv", 0, lambda i, w: "1")[0]
        weighted_config = exact_logistic(path)
    else:
        weighted_config = make_config(
            f"model.l2={L2}", *ALL_ROWS, *EXACT, "model.class_weight={benign: 1, malignant: 1}", path=LOGREG
        )
    weighted = fit(weighted_config, out_dir=tmp_path / "weighted")
    plain = fit(make_config(f"model.l2={L2}", *ALL_ROWS, *EXACT, path=LOGREG), out_dir=tmp_path / "plain")
    assert load_dataset(weighted_config).train.y.ndim == 2  # the weighted run did take (label, weight) rows
    assert weighted.objective == pytest.approx(plain.objective, rel=1e-12)
    assert weighted.final["train_loss"] == pytest.approx(plain.final["train_loss"], rel=1e-12)
