"""Models, losses, the hand-derived gradient, optimizers and schedules.

Float64 checks run inside ``jax.enable_x64(True)`` (the ``x64`` fixture); nothing sets it globally.
"""

from __future__ import annotations

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CONFIGS

from gradfit.config.load import OptimizerConfig, resolve_config
from gradfit.core.losses import data_loss, l2_penalty, logistic_manual_grad, make_objective, row_correct
from gradfit.core.models import build_model, count_params, logistic, mlp, named_leaves, weight_mask
from gradfit.core.optim import make_optimizer, make_schedule
from gradfit.errors import ConfigError

OPTIMIZERS = typing.get_args(OptimizerConfig.model_fields["name"].annotation)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def config(*overrides: str):
    return resolve_config(None, list(overrides)).config


def rng_normal(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------------------------------ models


def test_logistic_params_start_at_zero_and_apply_gives_one_logit_per_row():
    model = logistic(5)
    params = model.init(jax.random.key(0))
    assert set(params) == {"w", "b"}
    assert params["w"].shape == (5,) and params["b"].shape == ()
    assert not np.any(np.asarray(params["w"])) and float(params["b"]) == 0.0
    x = jnp.asarray(rng_normal(0, (7, 5)), jnp.float32)
    params = {"w": jnp.arange(5.0), "b": jnp.asarray(0.5)}
    logits = model.apply(params, x)
    assert logits.shape == (7,)
    np.testing.assert_allclose(logits, np.asarray(x) @ np.arange(5.0) + 0.5, rtol=1e-5)


def test_logistic_init_honours_dtype(x64):
    params = logistic(3).init(jax.random.key(0), jnp.float64)
    assert params["w"].dtype == jnp.float64 and params["b"].dtype == jnp.float64


@pytest.mark.parametrize("n_classes, out_shape", [(2, (6,)), (10, (6, 10))])
def test_mlp_output_shape_follows_the_number_of_classes(n_classes, out_shape):
    model = build_model(config("model.kind=mlp", "model.hidden=[8, 4]").model, n_features=3, n_classes=n_classes)
    params = model.init(jax.random.key(0))
    assert len(params["layers"]) == 2 + 1  # one per hidden layer plus the output layer
    sizes = [(layer["w"].shape, layer["b"].shape) for layer in params["layers"]]
    n_out = 1 if n_classes == 2 else n_classes
    assert sizes == [((3, 8), (8,)), ((8, 4), (4,)), ((4, n_out), (n_out,))]
    assert model.apply(params, jnp.ones((6, 3))).shape == out_shape


def test_build_model_logistic_ignores_classes():
    model = build_model(config().model, n_features=4, n_classes=2)
    assert set(model.init(jax.random.key(0))) == {"w", "b"}


@pytest.mark.parametrize("hidden", [[5], [5, 6, 7, 8]])
def test_mlp_has_one_layer_per_hidden_size_plus_output(hidden):
    params = mlp(3, 1, hidden, "relu").init(jax.random.key(1))
    assert len(params["layers"]) == len(hidden) + 1
    assert all(not np.any(np.asarray(layer["b"])) for layer in params["layers"])  # biases start at zero


def glorot(fan_in, fan_out):
    return math.sqrt(2.0 / (fan_in + fan_out))


def he(fan_in, fan_out):
    return math.sqrt(2.0 / fan_in)


@pytest.mark.parametrize(
    "activation, init_scheme, hidden_rule",
    [
        ("relu", "auto", he),
        ("gelu", "auto", he),
        ("silu", "auto", he),
        ("tanh", "auto", glorot),
        ("sigmoid", "auto", glorot),
        ("relu", "glorot", glorot),
        ("tanh", "he", he),
    ],
)
def test_mlp_init_scale(activation, init_scheme, hidden_rule):
    """Empirical std of a wide layer within 10% of the rule (120k draws: the sampling error is ~0.2%)."""
    fan_in, width, n_out = 400, 300, 10
    params = mlp(fan_in, n_out, [width], activation, init_scheme).init(jax.random.key(0))
    hidden_w, out_w = (np.asarray(layer["w"]) for layer in params["layers"])
    assert hidden_w.std() == pytest.approx(hidden_rule(fan_in, width), rel=0.10)
    assert abs(hidden_w.mean()) < 0.05 * hidden_w.std()
    # the output layer is always Glorot (3000 draws: sampling error ~1.3%)
    assert out_w.std() == pytest.approx(glorot(width, n_out), rel=0.10)


def test_mlp_init_is_deterministic_for_a_key():
    model = mlp(4, 3, [5, 5], "tanh")
    a, b, c = model.init(jax.random.key(7)), model.init(jax.random.key(7)), model.init(jax.random.key(8))
    for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a["layers"][0]["w"], c["layers"][0]["w"])


def test_mlp_apply_matches_a_hand_forward_pass():
    model = mlp(3, 4, [5], "tanh")
    params = model.init(jax.random.key(2))
    x = rng_normal(3, (6, 3)).astype(np.float32)
    (w0, b0), (w1, b1) = ((np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in params["layers"])
    expected = np.tanh(x @ w0 + b0) @ w1 + b1
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


def test_named_leaves_weight_mask_and_count_params():
    params = mlp(5, 1, [3], "relu").init(jax.random.key(0))
    names = named_leaves(params)
    assert set(names) == {"layers/0/w", "layers/0/b", "layers/1/w", "layers/1/b"}
    assert names["layers/0/w"].shape == (5, 3) and names["layers/1/b"].shape == (1,)
    mask = named_leaves(weight_mask(params))
    assert mask == {"layers/0/w": True, "layers/0/b": False, "layers/1/w": True, "layers/1/b": False}
    assert count_params(params) == 5 * 3 + 3 + 3 * 1 + 1
    flat = named_leaves(logistic(4).init(None))
    assert set(flat) == {"w", "b"}
    assert named_leaves(weight_mask(logistic(4).init(None))) == {"w": True, "b": False}
    assert count_params(logistic(4).init(None)) == 5


# ------------------------------------------------------------------------------------------------ losses


def test_binary_logistic_loss_matches_the_naive_formula(x64):
    logits = rng_normal(0, 50) * 5
    y = np.where(rng_normal(1, 50) > 0, 1.0, -1.0)
    naive = np.mean(np.log1p(np.exp(-y * logits)))
    loss = data_loss(jnp.asarray(logits), jnp.asarray(y))
    assert loss.dtype == jnp.float64
    assert float(loss) == pytest.approx(naive, rel=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_logistic_loss_is_stable_at_large_margins(dtype):
    with jax.enable_x64(dtype == "float64"):
        y = jnp.ones(1, dtype)
        right = data_loss(jnp.asarray([1000.0], dtype), y)
        wrong = data_loss(jnp.asarray([-1000.0], dtype), y)
        grad_right = jax.grad(data_loss)(jnp.asarray([1000.0], dtype), y)
        grad_wrong = jax.grad(data_loss)(jnp.asarray([-1000.0], dtype), y)
    rel = 1e-12 if dtype == "float64" else 1e-6
    assert np.isfinite([right, wrong]).all()
    assert float(right) == pytest.approx(0.0, abs=1e-300)  # log(1 + e^-1000) underflows to 0
    assert float(wrong) == pytest.approx(1000.0, rel=rel)
    assert float(grad_right[0]) == pytest.approx(0.0, abs=1e-300)
    assert float(grad_wrong[0]) == pytest.approx(-1.0, rel=rel)


def test_softmax_cross_entropy_matches_hand_computation(x64):
    logits = rng_normal(2, (8, 4)) * 3
    labels = np.array([0, 1, 2, 3, 3, 2, 1, 0])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(8), labels])
    assert float(data_loss(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(expected, rel=1e-12)


def test_accuracy_binary_counts_zero_as_positive():
    logits = jnp.asarray([0.0, 0.0, 2.0, -3.0, -0.1])
    y = jnp.asarray([1.0, -1.0, 1.0, 1.0, -1.0])
    assert float(jnp.mean(row_correct(logits, y))) == pytest.approx(3 / 5)


def test_accuracy_multiclass_uses_argmax():
    logits = jnp.asarray([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]])
    assert float(jnp.mean(row_correct(logits, jnp.asarray([1, 0, 1, 1])))) == pytest.approx(3 / 4)


def test_l2_penalty_skips_biases(x64):
    params = mlp(4, 3, [5], "relu").init(jax.random.key(0), jnp.float64)
    params = jax.tree_util.tree_map(lambda p: p + 0.5, params)  # non-zero biases, which must not count
    weights = sum(float(np.sum(np.asarray(layer["w"]) ** 2)) for layer in params["layers"])
    assert float(l2_penalty(params, 0.3)) == pytest.approx(0.15 * weights, rel=1e-12)
    assert float(l2_penalty(params, 0.0)) == 0.0
    assert float(l2_penalty({"w": jnp.asarray([3.0, 4.0]), "b": jnp.asarray(10.0)}, 2.0)) == pytest.approx(25.0)


# ------------------------------------------------------------------------------------------------ manual gradient


@pytest.mark.parametrize("l2", [0.0, 0.1])
@pytest.mark.parametrize("seed", [0, 1])
def test_manual_gradient_equals_autodiff(x64, l2, seed):
    n, d = 30, 4
    x = rng_normal(seed, (n, d))
    x[:5] *= 400.0  # rows with margins in the hundreds: sigmoid saturates to 0 or 1
    y = np.where(rng_normal(seed + 10, n) > 0, 1.0, -1.0)
    params = {"w": rng_normal(seed + 20, d), "b": np.asarray(0.3)}
    margins = y * (x @ params["w"] + params["b"])
    assert np.abs(margins).max() > 100  # the large-margin rows are really there

    objective = make_objective(logistic(d).apply, l2)
    auto = jax.grad(objective)(jax.tree_util.tree_map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y))
    manual = logistic_manual_grad(params, x, y, l2)
    assert auto["w"].dtype == jnp.float64
    for key in ("w", "b"):
        a, m = np.asarray(auto[key]), np.asarray(manual[key])
        assert m.shape == a.shape
        assert np.all(np.isfinite(m))
        assert np.linalg.norm(a - m) <= 1e-12 * np.linalg.norm(a), (key, a, m)


# ------------------------------------------------------------------------------------------------ optimizers


def quadratic(params):
    """Minimum 0 at w = 0, b = 1; differently curved directions."""
    return 0.5 * jnp.sum(jnp.asarray([1.0, 3.0]) * params["w"] ** 2) + 0.5 * (params["b"] - 1.0) ** 2


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
    # adagrad's steps shrink like 1/sqrt(t), so it gets a larger (still ordinary) learning rate
    lr = {"lbfgs": None, "adagrad": 0.5}.get(name, 0.1)
    overrides = [f"optimizer.name={name}"] + ([f"optimizer.learning_rate={lr}"] if lr else [])
    optimizer, schedule = make_optimizer(config(*overrides).optimizer, total_steps=50)
    assert isinstance(optimizer, optax.GradientTransformationExtraArgs)
    assert (schedule is None) == (name == "lbfgs")

    @jax.jit
    def step(params, state):
        value, grad = jax.value_and_grad(quadratic)(params)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=quadratic)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(0.0)}
    start = float(quadratic(params))
    state = optimizer.init(params)
    for _ in range(50):
        params, state = step(params, state)
    end = float(quadratic(params))
    assert np.isfinite(end)
    assert end < 0.05 * start, (name, start, end)


def test_clip_norm_limits_the_first_sgd_step():
    optimizer, _ = make_optimizer(
        config("optimizer.name=sgd", "optimizer.learning_rate=1.0", "optimizer.clip_norm=0.5").optimizer, total_steps=10
    )
    params = {"w": jnp.asarray([30.0, -40.0]), "b": jnp.asarray(0.0)}
    grad = {"w": jnp.asarray([30.0, -40.0]), "b": jnp.asarray(0.0)}  # norm 50
    updates, _ = optimizer.update(grad, optimizer.init(params), params)
    norm = math.sqrt(sum(float(np.sum(np.asarray(u) ** 2)) for u in jax.tree_util.tree_leaves(updates)))
    assert norm == pytest.approx(0.5, rel=1e-6)


# ------------------------------------------------------------------------------------------------ schedules


def schedule_for(name: str, total_steps: int = 100, lr: float = 0.2, **settings):
    overrides = ["optimizer.name=sgd", f"optimizer.learning_rate={lr}", f"optimizer.schedule.name={name}"]
    overrides += [f"optimizer.schedule.{key}={value}" for key, value in settings.items()]
    return make_schedule(config(*overrides).optimizer, total_steps)


def values(schedule, steps) -> np.ndarray:
    return np.asarray([float(schedule(step)) for step in steps])


def test_constant_schedule_is_constant():
    np.testing.assert_allclose(values(schedule_for("constant"), [0, 1, 50, 100, 500]), 0.2, rtol=1e-7)


@pytest.mark.parametrize("name", ["cosine", "exponential"])
def test_decaying_schedules_go_from_lr_to_the_final_fraction(name):
    schedule = schedule_for(name, final_fraction=0.1)
    curve = values(schedule, range(0, 101))
    assert curve[0] == pytest.approx(0.2, rel=1e-6)
    assert curve[100] == pytest.approx(0.02, rel=1e-5)
    assert np.all(np.diff(curve) < 0)  # strictly decreasing in between


def test_warmup_cosine_rises_from_zero_to_lr_then_decays():
    schedule = schedule_for("warmup_cosine", warmup_steps=10, final_fraction=0.05)
    curve = values(schedule, range(0, 101))
    assert curve[0] == 0.0
    assert curve[5] == pytest.approx(0.1, rel=1e-6)  # linear warm-up
    assert curve[10] == pytest.approx(0.2, rel=1e-6)
    assert curve.max() == pytest.approx(0.2, rel=1e-6)
    assert curve[100] == pytest.approx(0.01, rel=1e-5)
    assert np.all(np.diff(curve[:11]) > 0) and np.all(np.diff(curve[10:]) < 0)


@pytest.mark.parametrize("warmup, total", [(100, 100), (150, 100)])
def test_warmup_not_shorter_than_the_run_is_a_config_error(warmup, total):
    with pytest.raises(ConfigError, match=f"warmup_steps={warmup}"):
        schedule_for("warmup_cosine", total_steps=total, warmup_steps=warmup)


@pytest.mark.parametrize("total, peak", [(100, 8), (40, 3), (640, 51)])
def test_a_warmup_fraction_scales_the_warmup_with_the_run(total, peak):
    """configs/mlp.yaml's 0.08: 51 of its 640 steps, and 3 of the 40 a 178-row table makes (where a fixed 50 would
    not fit)."""
    curve = values(schedule_for("warmup_cosine", total_steps=total, warmup_fraction=0.08), range(0, total + 1))
    assert curve[0] == 0.0 and curve[peak] == pytest.approx(0.2, rel=1e-6) == curve.max()
    assert np.all(np.diff(curve[: peak + 1]) > 0) and np.all(np.diff(curve[peak:]) < 0)


def test_the_warmup_is_steps_or_a_fraction_and_a_set_of_one_replaces_the_other():
    with pytest.raises(ConfigError, match="warmup_fraction: the warm-up is warmup_steps or warmup_fraction"):
        config("optimizer.schedule={name: warmup_cosine, warmup_steps: 5, warmup_fraction: 0.1}")
    mlp = CONFIGS / "mlp.yaml"
    assert resolve_config(mlp).config.optimizer.schedule.warmup_fraction == 0.08
    steps = resolve_config(mlp, ["optimizer.schedule.warmup_steps=5"]).config.optimizer.schedule
    assert (steps.warmup_steps, steps.warmup_fraction) == (5, None)  # the command line wins over the file
