"""The elastic net (model.l1 with model.l2): proximal steps after sgd, momentum and adam reach scikit-learn's saga
optimum with the same exact zeros; optimizers that cannot take the L1 term are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, make_config

from gradfit.config.load import resolve_config
from gradfit.data.dataset import load_dataset
from gradfit.errors import ConfigError, GradfitError
from gradfit.training.loop import fit

L1, L2 = 0.01, 0.01


def _saga_reference(config):
    """scikit-learn's elastic-net logistic regression on the run's rows: C * sum(loss) + r ||w||_1 + (1 - r)/2 ||w||^2
    is ours, mean(loss) + l1 ||w||_1 + (l2/2) ||w||^2, times C n when C = 1 / (n (l1 + l2)) and r = l1 / (l1 + l2)."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    data = load_dataset(config)
    x, y, n = data.train.x, data.train.y, len(data.train)
    clf = sklearn.LogisticRegression(
        solver="saga", l1_ratio=L1 / (L1 + L2), C=1 / (n * (L1 + L2)), tol=1e-12, max_iter=200_000
    )
    clf.fit(x, y)
    w, b = clf.coef_[0], clf.intercept_[0]
    objective = np.mean(np.logaddexp(0, -y * (x @ w + b))) + L1 * np.abs(w).sum() + L2 / 2 * w @ w
    return objective, w


def _config(optimizer: str, *overrides: str):
    return make_config(
        "runtime.precision=float64",
        f"model.l1={L1}",
        f"model.l2={L2}",
        f"optimizer.name={optimizer}",
        "data.val_fraction=0",
        "data.test_fraction=0",
        *overrides,
        path=CONFIGS / "logreg.yaml",
    )


@pytest.mark.parametrize(
    "optimizer, overrides",
    [
        ("sgd", ("optimizer.learning_rate=0.5", "train.steps=3000", "train.tol=1e-9")),
        ("momentum", ("optimizer.learning_rate=0.1", "train.steps=3000", "train.tol=1e-9")),
        ("adam", ("optimizer.learning_rate=0.01", "train.steps=3000", "train.tol=1e-9")),
    ],
)
def test_elastic_net_reaches_the_saga_optimum_with_its_zeros(optimizer, overrides, out_dir):
    config = _config(optimizer, *overrides)
    summary = fit(config, out_dir=out_dir)
    reference, w = _saga_reference(config)
    assert summary.objective == pytest.approx(reference, rel=1e-5)
    with np.load(Path(summary.run_dir) / "params.npz") as params:
        np.testing.assert_array_equal(params["w"] == 0, w == 0)  # the same exact zeros
        np.testing.assert_allclose(params["w"], w, atol=1e-4)
    assert summary.zero_weights == int((w == 0).sum()) > 0
    assert summary.grad_norm < 1e-6  # the minimum-norm subgradient, zero at the optimum


def test_optimizers_without_a_proximal_step_refuse_l1():
    for optimizer in ("lbfgs", "rmsprop", "adagrad"):
        with pytest.raises(ConfigError, match=r"model\.l1.*sgd, momentum, nesterov, adam, adamw"):
            resolve_config(CONFIGS / "logreg.yaml", [f"optimizer.name={optimizer}", "model.l1=0.01"])


def test_l1_zero_trains_as_before(out_dir):
    plain = fit(make_config("optimizer.name=adam", "train.steps=50", path=CONFIGS / "logreg.yaml"), out_dir=out_dir)
    zero = fit(
        make_config("optimizer.name=adam", "train.steps=50", "model.l1=0", path=CONFIGS / "logreg.yaml"),
        out_dir=out_dir,
    )
    assert zero.zero_weights is None and plain.objective == zero.objective
    with np.load(Path(plain.run_dir) / "params.npz") as a, np.load(Path(zero.run_dir) / "params.npz") as b:
        assert a["w"].tobytes() == b["w"].tobytes()


def test_inference_refuses_an_l1_run(out_dir):
    from gradfit.api import load_run

    summary = fit(_config("sgd", "optimizer.learning_rate=0.5", "train.steps=200"), out_dir=out_dir)
    with pytest.raises(GradfitError, match="L1 penalty"):
        load_run(summary.run_dir).inference()
