"""Models as pure functions over plain pytrees of arrays.

``init(key, dtype) -> params`` and ``apply(params, x) -> logits`` with x: (n, d). Binary tasks get one logit per
row, shape (n,); K > 2 classes get (n, K). Parameter names are readable pytree paths ("layers/0/w").

With a ``compute_dtype`` (bfloat16 mixed precision) the inputs of each matrix product are cast to it and the
product is returned in the parameters' dtype; everything else stays in the parameters' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradfit.config.schema import ModelConfig

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
}
_HE_FAMILY = {"relu", "gelu", "silu"}


class Model(NamedTuple):
    init: Callable  # (key, dtype) -> params
    apply: Callable  # (params, x: (n, d)) -> logits: (n,) or (n, K); a numeric target's prediction: (n,)
    row_loss: Callable | None = None  # (outputs, y) -> (n,) losses; None: the log loss (gradfit.core.losses)


def dense(x, w, compute_dtype=None):
    """``x @ w``; with ``compute_dtype``, from inputs in that dtype with the result in ``w``'s dtype."""
    if compute_dtype is None or compute_dtype == w.dtype:
        return x @ w
    return jnp.matmul(x.astype(compute_dtype), w.astype(compute_dtype), preferred_element_type=w.dtype)


def logistic(n_features: int, n_classes: int = 2, compute_dtype=None) -> Model:
    """Logistic regression, starting at zero. Two classes: logit = <w, x> + b, params {"w": (d,), "b": ()}. K > 2
    classes (multinomial, softmax regression): logits = x W + b, params {"w": (d, K), "b": (K,)}, every class with
    its own coefficients (as scikit-learn's multinomial LogisticRegression; the penalty makes them identified)."""
    shape: tuple[int, ...] = (n_features,) if n_classes <= 2 else (n_features, n_classes)

    def init(key, dtype=jnp.float32):
        del key  # the loss is convex: zero is the conventional, reproducible start
        return {"w": jnp.zeros(shape, dtype), "b": jnp.zeros(shape[1:], dtype)}

    def apply(params, x):
        return dense(x, params["w"], compute_dtype) + params["b"]

    return Model(init, apply)


def mlp(
    n_features: int, n_outputs: int, hidden: list[int], activation: str, init_scheme: str = "auto", compute_dtype=None
) -> Model:
    """Fully connected network; params {"layers": [{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]}.

    Hidden layers use He init (relu family) or Glorot init (tanh, sigmoid); the output layer uses Glorot.
    With ``n_outputs == 1`` the output is squeezed to (n,), the binary logit.
    """
    sizes = [n_features, *hidden, n_outputs]
    act = ACTIVATIONS[activation]
    if init_scheme == "auto":
        init_scheme = "he" if activation in _HE_FAMILY else "glorot"

    def init(key, dtype=jnp.float32):
        layers = []
        keys = jax.random.split(key, len(sizes) - 1)
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            is_output = i == len(sizes) - 2
            if init_scheme == "he" and not is_output:
                scale = math.sqrt(2.0 / fan_in)
            else:
                scale = math.sqrt(2.0 / (fan_in + fan_out))
            layers.append(
                {
                    "w": scale * jax.random.normal(k, (fan_in, fan_out), dtype),
                    "b": jnp.zeros((fan_out,), dtype),
                }
            )
        return {"layers": layers}

    def apply(params, x):
        *hidden_layers, last = params["layers"]
        for layer in hidden_layers:
            x = act(dense(x, layer["w"], compute_dtype) + layer["b"])
        logits = dense(x, last["w"], compute_dtype) + last["b"]
        return logits[:, 0] if n_outputs == 1 else logits

    return Model(init, apply)


def build_model(
    config: ModelConfig, n_features: int, n_classes: int, compute_dtype=None, row_loss: Callable | None = None
) -> Model:
    """The model a config names, sized for the data: one output for two classes or a numeric target (``n_classes``
    0), else one per class. A linear model has the binary logistic regression's parameters, {"w": (d,), "b": ()}.
    ``row_loss``: the loss it is trained with (``gradfit.core.losses.row_loss_of``), None for the log loss."""
    if config.kind in ("logistic", "linear"):
        return logistic(n_features, n_classes, compute_dtype)._replace(row_loss=row_loss)
    n_outputs = 1 if n_classes <= 2 else n_classes
    return mlp(n_features, n_outputs, config.hidden, config.activation, config.init, compute_dtype)._replace(
        row_loss=row_loss
    )


def path_name(path) -> str:
    """A pytree key path as a readable name: (DictKey('layers'), SequenceKey(0), DictKey('w')) -> 'layers/0/w'."""
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def named_leaves(params) -> dict[str, jax.Array]:
    """Flatten params to {'layers/0/w': array, ...} in pytree order."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def weight_mask(params):
    """True for weight matrices/vectors ('w'), False for biases: what L2 and weight decay act on."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p).split("/")[-1] == "w", params)


def count_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def count_zero_weights(params) -> int:
    """How many weights (not biases) are exactly zero: what an L1 penalty's proximal steps leave."""
    zeros = jax.tree_util.tree_map(lambda p, m: int((p == 0).sum()) if m else 0, params, weight_mask(params))
    return sum(jax.tree_util.tree_leaves(zeros))


def params_from_named(template, arrays: dict, origin: str = "params"):
    """Inverse of ``named_leaves``: fill ``template``'s structure with ``arrays[name]``, checking names and shapes.

    Raises:
        ValueError: naming the missing, unexpected or mis-shaped entries.
    """
    expected = named_leaves(template)
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{origin} does not match the model: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}"
        )
    for name, leaf in expected.items():
        if tuple(arrays[name].shape) != tuple(leaf.shape):
            raise ValueError(
                f"{origin}: '{name}' has shape {tuple(arrays[name].shape)}, the model expects {tuple(leaf.shape)}"
            )
    leaves = [jnp.asarray(arrays[name], leaf.dtype) for name, leaf in expected.items()]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
