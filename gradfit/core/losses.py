"""Losses, metrics, and the hand-derived ("manual") gradients of gradfit's models.

The binary loss takes labels y in {-1, +1} and one logit per row:
    L(theta) = (1/N) sum_i log(1 + exp(-y_i * logit_i)) + (l2/2) * ||w||^2
computed as ``logaddexp(0, -y * logit)`` so that large margins neither overflow nor lose precision. K > 2 classes
take class ids and K logits per row: L(theta) = (1/N) sum_i -log softmax(logits_i)[y_i] + (l2/2) * ||W||^2.
A numeric target takes the squared loss (1/2)(y_i - f_i)^2 or the Huber loss: (1/2) r^2 for |r| <= delta, else
delta (|r| - delta / 2), r = y_i - f_i. The target is standardized before training ((y - mean) / std, see
``gradfit.data.dataset``), so a Huber delta given in the target's units acts as delta / std here; the objective in
the target's units is std^2 times this one, with the same minimizer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.config.schema import ModelConfig
from gradfit.core.models import weight_mask


def split_weights(y):
    """(labels, weights) of the labels a loss takes: weighted rows come as (label, weight) pairs, shape (n, 2)
    (``gradfit.data.labels.with_weights``); otherwise (y, None). Works on NumPy and jax arrays alike."""
    if y.ndim == 2:
        return y[:, 0], y[:, 1]
    return y, None


def row_losses(logits, y):
    """The task's loss per row, chosen by the logits' shape.

    logits (n,): binary, y in {-1, +1}: log(1 + exp(-y * logit)). logits (n, K): y int class ids in [0, K):
    -log softmax(logits)[y].
    """
    if logits.ndim == 1:
        return jnp.logaddexp(0.0, -y * logits)
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, y[:, None].astype(jnp.int32), axis=1)[:, 0]


def squared_losses(outputs, y):
    """(1/2)(y - f)^2 per row: outputs f (n,), numeric targets y (n,)."""
    return 0.5 * jnp.square(y - outputs)


def huber_losses(outputs, y, delta: float):
    """Huber's loss per row: (1/2) r^2 where |r| <= delta, delta (|r| - delta/2) beyond, r = y - f."""
    size = jnp.abs(y - outputs)
    return jnp.where(size <= delta, 0.5 * jnp.square(size), delta * (size - 0.5 * delta))


def row_loss_of(model: ModelConfig, target_std: float = 1.0) -> Callable:
    """The per-row loss ``(outputs, y) -> (n,)`` a model config asks for. ``target_std``: the numeric target's
    standardization, which ``huber_delta`` (in the target's units) is divided by."""
    loss = model.resolved_loss
    if loss == "squared":
        return squared_losses
    if loss == "huber":
        return functools.partial(huber_losses, delta=model.huber_delta / target_std)
    return row_losses


def row_correct(logits, y):
    """Per row, whether the prediction is right (bool); a zero binary logit counts as +1."""
    if logits.ndim == 1:
        return jnp.where(logits >= 0, 1.0, -1.0) == y
    return jnp.argmax(logits, axis=1) == y


def data_loss(logits, y, row_loss: Callable | None = None):
    """Mean of ``row_loss`` (by default the log loss: binary logistic for (n,) logits, softmax cross-entropy for
    (n, K)); with weighted labels the mean of weight * loss over the rows."""
    labels, weights = split_weights(y)
    losses = (row_loss or row_losses)(logits, labels)
    return jnp.mean(losses if weights is None else weights * losses)  # scikit-learn's sample_weight: over n rows


def l2_penalty(params, l2: float):
    """(l2/2) * sum of squared weights; biases are not penalized (as in scikit-learn)."""
    if static_zero(l2):  # a traced l2 (a sweep member's) always adds its term
        return 0.0
    mask = weight_mask(params)
    squares = jax.tree_util.tree_map(lambda p, m: jnp.sum(p * p) if m else 0.0, params, mask)
    return 0.5 * l2 * sum(jax.tree_util.tree_leaves(squares))


def static_zero(value) -> bool:
    """True for a Python 0 (a traced value, a sweep member's, is never skipped)."""
    return isinstance(value, (int, float)) and value == 0


def l1_penalty(params, l1):
    """l1 * sum |w| over the weights (biases are not penalized)."""
    if static_zero(l1):
        return 0.0
    mask = weight_mask(params)
    sums = jax.tree_util.tree_map(lambda p, m: jnp.sum(jnp.abs(p)) if m else 0.0, params, mask)
    return l1 * sum(jax.tree_util.tree_leaves(sums))


def stationarity(grads, params, l1):
    """The gradient of the smooth objective, made the minimum-norm subgradient of the objective with its L1 term:
    g + l1 sign(w) where w != 0, soft-threshold(g, l1) where w == 0. Zero exactly at the optimum, so its norm is
    what ``grad_norm`` and ``train.tol`` measure; ``grads`` unchanged when ``l1`` is 0."""
    if static_zero(l1):
        return grads

    def subgradient(g, p, m):
        if not m:
            return g
        return jnp.where(p != 0, g + l1 * jnp.sign(p), jnp.sign(g) * jnp.maximum(jnp.abs(g) - l1, 0))

    return jax.tree_util.tree_map(subgradient, grads, params, weight_mask(params))


def make_objective(apply: Callable, l2: float, row_loss: Callable | None = None) -> Callable:
    """objective(params, x, y) = mean of ``row_loss`` (None: the log loss) + L2 penalty: what the optimizer
    minimizes."""

    def objective(params, x, y):
        return data_loss(apply(params, x), y, row_loss) + l2_penalty(params, l2)

    return objective


def logistic_manual_grad(params: dict, x: np.ndarray, y: np.ndarray, l2: float = 0.0, dtype=np.float64) -> dict:
    """Closed-form gradient of the L2-penalized logistic loss, in NumPy (float64 unless ``dtype``).

    Binary (w: (d,), y in {-1, +1}): d/dw = (1/N) X^T (-y * sigmoid(-y * m)) + l2 * w,
    d/db = mean(-y * sigmoid(-y * m)), m = X w + b. Weighted rows (y: (label, weight) pairs) multiply each row's
    residual by its weight. Multinomial (w: (d, K), y class ids): with P = softmax(X W + b)
    row by row and Y the one-hot labels, d/dW = (1/N) X^T (P - Y) + l2 * W, d/db = mean over rows of (P - Y).
    """
    w = np.asarray(params["w"], dtype)
    b = np.asarray(params["b"], dtype)
    x = np.asarray(x, dtype)  # no copy when already of this dtype
    y, weights = split_weights(np.asarray(y))
    scale = 1.0 if weights is None else np.asarray(weights, dtype)  # weighted rows: each residual times its weight
    if w.ndim == 2:
        residual = _softmax(x @ w + b)
        residual[np.arange(len(y)), np.asarray(y, np.int64)] -= 1.0
        residual *= np.reshape(scale, (-1, 1))
        return {"w": x.T @ residual / len(y) + l2 * w, "b": residual.mean(axis=0)}
    y = np.asarray(y, dtype)
    margin = -y * (x @ w + b)
    # sigmoid(t) = exp(-logaddexp(0, -t)) never overflows
    residual = -y * np.exp(-np.logaddexp(0.0, -margin)) * scale
    return {"w": x.T @ residual / len(y) + l2 * w, "b": np.asarray(residual.mean())}


def output_gradient(outputs: np.ndarray, y: np.ndarray, loss: str, delta: float = 1.0) -> np.ndarray:
    """d loss_i / d f_i of a numeric target's loss, per row: the residual f - y (squared), clipped to
    [-delta, delta] (huber)."""
    residual = outputs - y
    return np.clip(residual, -delta, delta) if loss == "huber" else residual


def linear_manual_grad(
    params: dict,
    x: np.ndarray,
    y: np.ndarray,
    l2: float = 0.0,
    loss: str = "squared",
    delta: float = 1.0,
    dtype=np.float64,
) -> dict:
    """Closed-form gradient of the linear model's penalized squared or Huber loss, in NumPy (float64 unless
    ``dtype``): with g_i = d loss_i / d f_i (``output_gradient``) and f = X w + b,
    d/dw = (1/N) X^T g + l2 * w, d/db = mean(g); weighted rows multiply g_i by their weight."""
    w = np.asarray(params["w"], dtype)
    x = np.asarray(x, dtype)
    y, weights = split_weights(np.asarray(y))
    g = output_gradient(x @ w + np.asarray(params["b"], dtype), np.asarray(y, dtype), loss, delta)
    g = g if weights is None else g * np.asarray(weights, dtype)
    return {"w": x.T @ g / len(y) + l2 * w, "b": np.asarray(g.mean())}


# Hand-written activations and their derivatives, matching gradfit.core.models.ACTIVATIONS (gelu: tanh approximation,
# jax.nn.gelu's default; relu'(0) = 0 as in JAX).
_GELU_C = np.sqrt(2.0 / np.pi)


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, K) logits (the row maximum subtracted first: no overflow)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


_Elementwise = Callable[[np.ndarray], np.ndarray]
_ACTIVATION_AND_DERIVATIVE: dict[str, tuple[_Elementwise, _Elementwise]] = {
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype)),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "silu": (lambda z: z * _sigmoid(z), lambda z: _sigmoid(z) * (1.0 + z * (1.0 - _sigmoid(z)))),
    "gelu": (
        lambda z: 0.5 * z * (1.0 + np.tanh(_GELU_C * (z + 0.044715 * z**3))),
        lambda z: (
            0.5 * (1.0 + np.tanh(_GELU_C * (z + 0.044715 * z**3)))
            + 0.5 * z * (1.0 - np.tanh(_GELU_C * (z + 0.044715 * z**3)) ** 2) * _GELU_C * (1.0 + 3 * 0.044715 * z**2)
        ),
    ),
}


def mlp_manual_grad(
    params: dict,
    x: np.ndarray,
    y: np.ndarray,
    activation: str,
    l2: float = 0.0,
    loss: str = "log",
    delta: float = 1.0,
    dtype=np.float64,
) -> dict:
    """Backpropagation written out by hand in NumPy (float64 unless ``dtype``) for gradfit's MLP and its loss.

    Forward: a_0 = x, z_l = a_{l-1} W_l + b_l, a_l = act(z_l); the last z is the logits. Backward: delta_L is
    dLoss/dlogits ((softmax - onehot)/N, or -y sigmoid(-y s)/N for one binary logit, or ``output_gradient``/N
    for a numeric target's squared or huber ``loss``), then
    dW_l = a_{l-1}^T delta_l (+ l2 W_l), db_l = sum_rows delta_l, delta_{l-1} = (delta_l W_l^T) * act'(z_{l-1}).
    """
    act, act_prime = _ACTIVATION_AND_DERIVATIVE[activation]
    layers = [{k: np.asarray(v, dtype) for k, v in layer.items()} for layer in params["layers"]]
    a, pre_activations, inputs = np.asarray(x, dtype), [], []
    for i, layer in enumerate(layers):
        inputs.append(a)
        z = a @ layer["w"] + layer["b"]
        pre_activations.append(z)
        a = act(z) if i < len(layers) - 1 else z
    logits, n = a, len(x)
    y, weights = split_weights(np.asarray(y))
    if loss != "log":  # one output, a numeric target
        delta_l = output_gradient(logits[:, 0], np.asarray(y, dtype), loss, delta)[:, None] / n
    elif logits.shape[1] == 1:  # one binary logit, labels in {-1, +1}
        yy = np.asarray(y, dtype)[:, None]
        delta_l = -yy * _sigmoid(-yy * logits) / n
    else:
        probs = _softmax(logits)
        probs[np.arange(n), np.asarray(y, np.int64)] -= 1.0
        delta_l = probs / n
    if weights is not None:
        delta_l = delta_l * np.asarray(weights, dtype)[:, None]
    grads: list[dict[str, np.ndarray] | None] = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        grads[i] = {"w": inputs[i].T @ delta_l + l2 * layers[i]["w"], "b": delta_l.sum(axis=0)}
        if i > 0:
            delta_l = (delta_l @ layers[i]["w"].T) * act_prime(pre_activations[i - 1])
    return {"layers": grads}


def hand_derived_gradient(model: ModelConfig, target_std: float = 1.0) -> Callable:
    """The NumPy gradient written out by hand for a model config, with its L2 term:
    ``gradient(params, x, y, dtype=np.float64) -> grads`` (the pytree of params). ``target_std``: as in
    ``row_loss_of``."""
    loss, delta = model.resolved_loss, model.huber_delta / target_std
    if model.kind == "logistic":
        return functools.partial(logistic_manual_grad, l2=model.l2)
    if model.kind == "linear":
        return functools.partial(linear_manual_grad, l2=model.l2, loss=loss, delta=delta)
    return functools.partial(mlp_manual_grad, activation=model.activation, l2=model.l2, loss=loss, delta=delta)
