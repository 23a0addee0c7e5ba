"""The seeded synthetic dataset (``data.source: synthetic``): Gaussian features, labels from a softmax model (or,
for a numeric target, a linear one with Gaussian noise).

Rows come in blocks of ``SYNTHETIC_BLOCK``, each drawn from its own seed (seed, block): any range of rows can be
made alone (``synthetic_rows``, what streaming reads) and equals the same rows of the whole. No jax.
"""

from __future__ import annotations

import math

import numpy as np

from gradfit.config.data import SyntheticConfig
from gradfit.errors import DataError

SYNTHETIC_BLOCK = 1 << 16  # synthetic rows are generated in blocks of this many, each from its own seed


def feature_names(n_features: int) -> list[str]:
    """The synthetic features' names: x0, x1, ..."""
    return [f"x{i}" for i in range(n_features)]


def make_synthetic(
    n_samples: int,
    n_features: int,
    n_classes: int,
    separation: float,
    noise: float,
    seed: int,
    regression: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features and labels drawn from a softmax (for 2 classes: logistic) model.

    x ~ N(0, I); true weights W ~ N(0, separation^2 / d); label = argmax(x W + noise * Gumbel), so with
    noise = 1 the labels are exact samples of the model and with noise = 0 the classes are separable. With
    ``regression`` the target is x w + noise * N(0, 1), w the first column of W.

    Returns:
        x: (n, d) float32, y: (n,) int class ids (``regression``: float64 targets).

    Raises:
        DataError: the features do not fit in host memory.
    """
    spec = _Spec(
        SyntheticConfig(
            n_samples=n_samples, n_features=n_features, n_classes=n_classes, separation=separation, noise=noise
        ),
        regression,
    )
    try:
        x = np.empty((n_samples, n_features), np.float32)
    except MemoryError:
        gib = n_samples * n_features * 4 / 2**30
        raise DataError(
            f"synthetic data of {n_samples:,} x {n_features:,} needs {gib:.1f} GiB of memory for the "
            "features alone; lower data.synthetic.n_samples or set data.in_memory: false"
        ) from None
    y = np.empty(n_samples, np.float64 if regression else np.int64)
    weights = _weights(spec, seed)
    for block in range(-(-n_samples // SYNTHETIC_BLOCK)):
        rows = slice(block * SYNTHETIC_BLOCK, (block + 1) * SYNTHETIC_BLOCK)
        x[rows], y[rows] = _block(spec, weights, seed, block)
    return x, y


def synthetic_rows(
    config: SyntheticConfig, seed: int, start: int, stop: int, regression: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` of ``make_synthetic``'s data, made without the rest: x (stop - start, d) float32, y."""
    spec = _Spec(config, regression)
    weights = _weights(spec, seed)
    first, last = start // SYNTHETIC_BLOCK, (stop - 1) // SYNTHETIC_BLOCK
    parts = [_block(spec, weights, seed, block) for block in range(first, last + 1)]
    offset = start - first * SYNTHETIC_BLOCK
    x = np.concatenate([p[0] for p in parts])[offset : offset + stop - start]
    return x, np.concatenate([p[1] for p in parts])[offset : offset + stop - start]


class _Spec:
    """The generator's settings and whether it makes a numeric target."""

    def __init__(self, config: SyntheticConfig, regression: bool):
        self.n_samples, self.n_features, self.n_classes = config.n_samples, config.n_features, config.n_classes
        self.separation, self.noise, self.regression = config.separation, config.noise, regression


def _weights(spec: _Spec, seed: int) -> np.ndarray:
    """The true weights W (d, K) of the model the labels are drawn from."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((spec.n_features, spec.n_classes)) * (spec.separation / math.sqrt(spec.n_features))
    return weights.astype(np.float32)


def _block(spec: _Spec, weights: np.ndarray, seed: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of generator block ``block``: x float32 and their class ids (or numeric targets)."""
    rows = min(SYNTHETIC_BLOCK, spec.n_samples - block * SYNTHETIC_BLOCK)
    rng = np.random.default_rng([seed, block])
    x = rng.standard_normal((rows, spec.n_features), dtype=np.float32)
    if spec.regression:
        return x, x @ weights[:, 0].astype(np.float64) + spec.noise * rng.standard_normal(rows)
    logits = x @ weights
    if spec.noise > 0:
        logits += spec.noise * rng.gumbel(size=logits.shape).astype(np.float32)
    return x, logits.argmax(axis=1)
