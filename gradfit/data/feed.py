"""Minibatches of streamed data, fed to the device a group of steps at a time by a background thread.

Group ``g`` holds the minibatches of steps ``[g * G, (g + 1) * G)``: their rows (the epoch order of
``gradfit.data.shuffle``, the very integers the in-memory program gathers by), read from disk, standardized and cast
as the in-memory path does, stacked (G, batch, d) and put on the device. While the chunks of group ``g`` run,
the thread reads and transfers group ``g + 1``; the compiled chunk indexes its group by ``step - first_step``.
A group is about ``GROUP_BYTES`` of features, so host and device memory stay flat in the size of the data.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.data import shuffle
from gradfit.data.labels import label_dtype
from gradfit.data.streamed import StreamedSplit

GROUP_BYTES = 32 << 20  # features per group; two groups live at once (the one in use and the next)
MAX_GROUP_STEPS = 256


def group_steps(batch: int, n_features: int, itemsize: int, log_every: int) -> int:
    """Steps per group: whole log windows (a chunk then ends only where the in-memory run's may, so the log
    records are the same), as many as fit in ``GROUP_BYTES`` of features (at least one window) and at most
    ``MAX_GROUP_STEPS`` steps (unless one window is longer)."""
    windows = GROUP_BYTES // max(log_every * batch * n_features * itemsize, 1)
    return log_every * max(1, min(windows, MAX_GROUP_STEPS // log_every))


def rows_program(mode: str, n: int, batch: int, steps_per_epoch: int) -> Callable:
    """rows(key, steps) -> (len(steps), batch) int32: the training rows of each step's minibatch."""

    def rows(key, steps):
        def one(step):
            epoch, position = jnp.divmod(step, steps_per_epoch)
            return shuffle.order(mode, jax.random.fold_in(key, epoch), n, position * batch + jnp.arange(batch))

        return jax.vmap(one)(steps)

    return jax.jit(rows)


class Feeder:
    """Groups of minibatches for a streamed run, the next one prepared while the current one is used."""

    def __init__(
        self,
        split: StreamedSplit,
        mode: str,
        batch: int,
        steps_per_epoch: int,
        total_steps: int,
        log_every: int,
        dtypes: tuple,
        put: Callable[[dict], dict],
        scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.split, self.batch, self.total_steps, self.dtypes, self.put = split, batch, total_steps, dtypes, put
        self.scope = scope  # the run's precision: JAX's x64 switch is per thread, and groups are built in another
        self.steps = group_steps(batch, split.dataset.n_features, np.dtype(dtypes[1]).itemsize, log_every)
        self._rows = rows_program(mode, len(split), batch, steps_per_epoch)
        self._cpu = jax.devices("cpu")[0]
        self._key = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gradfit-feed")
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._current: tuple[int, dict] = (-1, {})
        self._template: dict | None = None

    def template(self) -> dict:
        """Zeros shaped like a group: what the chunk is compiled for."""
        if self._template is None:
            self._template = self._zeros()
        return self._template

    def _zeros(self) -> dict:
        x = np.zeros((self.steps, self.batch, self.split.dataset.n_features), self.dtypes[1])
        weighted = self.split.dataset.weighting is not None  # rows come as (label, weight) pairs
        y_dtype = label_dtype(self.split.dataset.n_classes, self.dtypes[0], weighted)
        y = np.zeros((self.steps, self.batch, 2) if weighted else (self.steps, self.batch), y_dtype)
        return self.put({"x": x, "y": y, "first_step": np.int32(0)})

    def start(self, shuffle_key) -> None:
        """Set the run's shuffle key (a device array); groups are read from the first ``group`` call on."""
        self._key = jax.device_put(np.asarray(shuffle_key), self._cpu)

    def group_end(self, step: int) -> int:
        return (step // self.steps + 1) * self.steps

    def group(self, step: int) -> dict:
        """The device arrays of the group that holds ``step``; starts preparing the next one."""
        index = step // self.steps
        if self._current[0] != index:
            future = self._pending.pop(index, None) or self._pool.submit(self._build, index)
            for stale in [g for g in self._pending if g < index]:
                self._pending.pop(stale).cancel()
            self._current = (index, future.result())
        following = index + 1
        if following * self.steps < self.total_steps and following not in self._pending:
            self._pending[following] = self._pool.submit(self._build, following)
        return self._current[1]

    def _build(self, index: int) -> dict:
        with self.scope():
            return self._build_group(index)

    def _build_group(self, index: int) -> dict:
        first = index * self.steps
        count = min(self.steps, self.total_steps - first)
        steps = jax.device_put(np.arange(first, first + self.steps, dtype=np.int32), self._cpu)
        rows = np.asarray(self._rows(self._key, steps))[:count]
        x, y = self.split.take(rows.reshape(-1), *self.dtypes)
        xs, ys = x.reshape(count, self.batch, -1), y.reshape(count, self.batch, *y.shape[1:])
        if count < self.steps:  # the run's last group: padded to the compiled shape (those steps never run)
            xs = np.concatenate([xs, np.zeros((self.steps - count, *xs.shape[1:]), xs.dtype)])
            ys = np.concatenate([ys, np.zeros((self.steps - count, *ys.shape[1:]), ys.dtype)])
        return self.put({"x": xs, "y": ys, "first_step": np.int32(first)})

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
