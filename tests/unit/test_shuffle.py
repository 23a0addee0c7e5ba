"""The minibatch order: a keyed permutation computed a batch at a time (gradfit.data.shuffle).

Statistical tests use fixed keys, so they are deterministic; each threshold is a p-value a correct uniform
shuffle falls below with probability 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradfit.data.shuffle import permuted

P_MIN = 1e-4


def many_orders(n: int, count: int, seed: int = 0) -> np.ndarray:
    """(count, n): the whole permutation of range(n) for ``count`` keys."""
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    return np.asarray(jax.jit(jax.vmap(lambda k: permuted(k, n, jnp.arange(n))))(keys))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4097, 65_537])
def test_every_row_once(n):
    order = np.asarray(jax.jit(permuted, static_argnums=1)(jax.random.PRNGKey(n), n, jnp.arange(n)))
    assert order.dtype == np.int32
    assert sorted(order.tolist()) == list(range(n))


def test_positions_can_be_asked_for_in_any_shape_and_order():
    key = jax.random.PRNGKey(7)
    whole = np.asarray(permuted(key, 1000, jnp.arange(1000)))
    batch = jnp.array([[5, 999], [0, 512]])
    np.testing.assert_array_equal(np.asarray(permuted(key, 1000, batch)), whole[np.asarray(batch)])


def test_other_keys_give_unrelated_orders():
    a, b = many_orders(1000, 2)
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1  # |r| of unrelated orders: about 1/sqrt(1000) = 0.03


@pytest.mark.parametrize("n", [9, 33, 100])
def test_each_row_is_equally_likely_at_each_position(n):
    from scipy import stats

    orders = many_orders(n, 300 * n)
    table = np.stack([np.bincount(orders[:, position], minlength=n) for position in range(n)])
    assert stats.chi2_contingency(table).pvalue > P_MIN


def test_neighbours_in_the_order_are_independent():
    # how often rows 0 and 1 end up next to each other: 2/n for a uniform shuffle
    n, count = 50, 20_000
    where = np.argsort(many_orders(n, count, seed=3), axis=1)
    adjacent = np.mean(np.abs(where[:, 0] - where[:, 1]) == 1)
    assert adjacent == pytest.approx(2 / n, abs=4 * np.sqrt(2 / n / count))
