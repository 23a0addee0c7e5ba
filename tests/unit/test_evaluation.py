"""The evaluation program: whole-split metrics computed in row blocks equal the direct computation (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradfit.core.losses import make_objective
from gradfit.core.models import mlp
from gradfit.training.evaluate import PROBE_ROWS, eval_parts, make_evaluate

L2 = 0.01  # the L2 penalty of the blocked and direct computations


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        model = mlp(5, 3, [7], "tanh")
        params = model.init(jax.random.PRNGKey(1), jnp.float64)
        data = {
            "x": rng.normal(size=(53, 5)),
            "y": rng.integers(0, 3, 53).astype(np.int32),
            "x_val": rng.normal(size=(19, 5)),
            "y_val": rng.integers(0, 3, 19).astype(np.int32),
            "x_test": np.zeros((0, 5)),
            "y_test": np.zeros((0,), np.int32),
        }
        yield model, params, {k: jnp.asarray(v) for k, v in data.items()}


@pytest.fixture(scope="module")
def direct(problem):
    """The metrics computed directly on the whole splits, for every block size below: one jitted program (op by
    op, its ~100 small programs took longer to compile than the evaluation itself)."""
    model, params, data = problem

    @jax.jit
    def compute(params, data):
        objective = make_objective(model.apply, L2)
        value, grads = jax.value_and_grad(objective)(params, data["x"], data["y"])
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        logits = model.apply(params, data["x_val"])
        log_probs = jax.nn.log_softmax(logits)
        val_loss = -jnp.mean(log_probs[jnp.arange(19), data["y_val"]])
        correct = jnp.sum(jnp.argmax(logits, axis=1) == data["y_val"])
        return value, norm, val_loss, correct

    with jax.enable_x64(True):
        value, norm, val_loss, correct = jax.device_get(compute(params, data))
    return float(value), float(norm), float(val_loss), int(correct)


@pytest.mark.parametrize("block", [4, 10, 53, 1000])  # blocks that do not divide the rows, exact, one block
def test_blocked_metrics_equal_the_direct_computation(problem, direct, block):
    model, params, data = problem
    value, norm, val_loss, correct = direct
    with jax.enable_x64(True):
        evaluate = jax.jit(make_evaluate(model, L2, block))
        out = jax.device_get(evaluate(params, data, eval_parts(train=True, gradient=True, val=True, test=True)))
    assert out["objective"] == pytest.approx(value, rel=1e-12)
    assert out["grad_norm"] == pytest.approx(norm, rel=1e-12)
    assert out["val_loss"] == pytest.approx(val_loss, rel=1e-12)
    assert int(out["val_score"]) == correct
    assert np.isnan(out["test_loss"]) and int(out["test_score"]) == -1  # an empty split: nothing to evaluate


def test_parts_not_asked_for_are_not_computed(problem):
    model, params, data = problem
    with jax.enable_x64(True):
        evaluate = jax.jit(make_evaluate(model, 0.0, 8))
        out = jax.device_get(evaluate(params, data, eval_parts(val=True)))
        probe = jax.device_get(evaluate(params, data, eval_parts(probe=True)))["probe"]
        direct = make_objective(model.apply, 0.0)(params, data["x"][:PROBE_ROWS], data["y"][:PROBE_ROWS])
    assert np.isnan(out["objective"]) and np.isnan(out["grad_norm"]) and np.isnan(out["probe"])
    assert np.isfinite(out["val_loss"])
    assert probe == pytest.approx(float(direct), rel=1e-12)


def test_unknown_parts_are_refused():
    with pytest.raises(ValueError, match="unknown evaluation parts"):
        eval_parts(everything=True)
