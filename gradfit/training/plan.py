"""The schedule of a run: how many steps, in what batches, and when the host looks (log points, evaluations)."""

from __future__ import annotations

import dataclasses
import math

from gradfit.config.load import GradfitConfig
from gradfit.errors import ConfigError

EVAL_SHARE = 0.05  # the automatic evaluation schedule keeps evaluation at or below this share of training work


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps, in what batches, and when the host looks: derived from the config and the split sizes.

    Log points are the multiples of ``log_every`` and the evaluations, which are the multiples of ``eval_every``
    and the last step.
    """

    total_steps: int
    steps_per_epoch: int
    batch_size: int | None  # None: full batch
    log_every: int
    eval_every: int
    eval_gradient: bool  # evaluations compute the full-split gradient norm (train.tol needs it)

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None

    @property
    def minibatch_size(self) -> int:
        """The rows of one minibatch (a full-batch plan has none)."""
        if self.batch_size is None:
            raise ValueError("a full-batch plan has no minibatches")
        return self.batch_size

    @classmethod
    def from_config(cls, config: GradfitConfig, n_train: int, n_val: int) -> Plan:
        """The plan of ``config``'s ``train`` section for splits of ``n_train`` and ``n_val`` rows.

        Raises:
            ConfigError: the batch is larger than the training split.
        """
        train = config.train
        if train.batch_size is not None and train.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size={train.batch_size} exceeds the {n_train} training rows; "
                "use a smaller batch or null for full batch"
            )
        batch = train.batch_size if train.batch_size not in (None, n_train) else None
        per_epoch = n_train // batch if batch else 1
        if train.steps is not None:
            total = train.steps
        else:
            assert train.epochs is not None  # the schema sets 100 epochs when steps is unset
            total = train.epochs * per_epoch
        gradient = train.tol is not None and batch is not None  # full batch: the state has the gradient
        if train.eval_every == "auto":
            every = auto_eval_every(n_train, n_val, batch, gradient, train.log_every, total)
        else:  # the schema allows a number or "auto"
            every = int(train.eval_every)
        return cls(total, per_epoch, batch, train.log_every, every, gradient)

    def point_at_or_after(self, step: int) -> int:
        """The first log point or evaluation at or after ``step``."""
        return min(
            -(-step // self.log_every) * self.log_every,
            -(-step // self.eval_every) * self.eval_every,
            self.total_steps,
        )

    def evaluates_at(self, step: int) -> bool:
        return step > 0 and (step % self.eval_every == 0 or step >= self.total_steps)


def auto_eval_every(
    n_train: int, n_val: int, batch: int | None, gradient: bool, log_every: int, total_steps: int
) -> int:
    """Steps between evaluations such that they cost at most ``EVAL_SHARE`` of the training steps' work.

    Work is counted in row passes: a forward pass over one row is 1, forward and backward 3. A training step
    costs 3 x its rows; an evaluation costs the validation rows, plus the training rows (3 x when it computes
    the gradient) unless the run is full batch, whose state already holds them. Rounded up to whole log points.
    """
    step_cost = 3 * (batch or n_train)
    eval_cost = n_val + (0 if batch is None else n_train * (3 if gradient else 1))
    if eval_cost == 0:
        return max(total_steps, 1)  # nothing but the end
    steps = math.ceil(eval_cost / (EVAL_SHARE * step_cost))
    return -(-steps // log_every) * log_every
