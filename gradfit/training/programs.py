"""The compiled programs of a run (the host-side loop around them is ``gradfit.training.loop``).

- ``chunk(state, data, num_steps)`` runs ``num_steps`` optimizer steps in nested ``while_loop``s, one per log
  window, and returns a column of numbers per window: the sums of what the steps computed anyway (the minibatch
  objective and gradient norm), so many log points cost one dispatch and no extra device work.
- ``evaluate(params, data, parts)`` computes the full-split metrics (objective and gradient norm over the whole
  training split, validation and test loss and accuracy) in fixed-size row blocks, so memory stays flat in the
  number of rows. It runs on its own schedule (``Plan.eval_every``); ``parts`` are traced flags, so one
  compiled program serves every combination.

The state is donated, the data stay on the device as jit arguments, and minibatches are gathered on the device
by a keyed permutation of (seed, epoch) (``gradfit.data.shuffle``). A full-batch step already has the objective and
gradient over the whole training split: the state carries them, so they are logged at every log point for free.

On a mesh of several devices (``gradfit.runtime.mesh``) the state and the data are replicated, and every program splits
the rows it works on (a minibatch, a full batch, an evaluation block) across the devices: data parallelism.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit.runs import loggers
from gradfit.core import precision
from gradfit.runtime import resources
from gradfit.runtime import mesh
from gradfit.data import shuffle
from gradfit.data import streamed as stream
from gradfit.config.load import GradfitConfig
from gradfit.data.dataset import Dataset, split_arrays
from gradfit.data.feed import Feeder
from gradfit.runtime.device import describe_device
from gradfit.errors import ConfigError
from gradfit.core.losses import l2_penalty, make_objective, row_correct, row_losses
from gradfit.core.models import Model, build_model
from gradfit.core.optim import make_optimizer

EVAL_SHARE = 0.05  # the automatic evaluation schedule keeps evaluation at or below this share of training work
BLOCK_ELEMENTS = 1 << 22  # rows x widest layer of one evaluation block: 16 MB of float32 activations
PROBE_ROWS = 1024  # rows of the checkpoint probe that a resume must reproduce bit for bit


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 (): optimizer steps taken so far
    current: Any = None  # full batch: (objective, gradient, its norm) at ``params``; the next step uses them


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps, in what batches, and when the host looks: derived from the config and the split sizes.

    Log points are the multiples of ``log_every`` and the evaluations, which are the multiples of ``eval_every``
    and the last step.
    """

    total_steps: int
    steps_per_epoch: int
    batch_size: Optional[int]  # None: full batch
    log_every: int
    eval_every: int
    eval_gradient: bool  # evaluations compute the full-split gradient norm (train.tol needs it)

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None

    @classmethod
    def from_config(cls, config: GradfitConfig, n_train: int, n_val: int) -> "Plan":
        train = config.train
        if train.batch_size is not None and train.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size={train.batch_size} exceeds the {n_train} training rows; "
                "use a smaller batch or null for full batch"
            )
        batch = train.batch_size if train.batch_size not in (None, n_train) else None
        per_epoch = n_train // batch if batch else 1
        total = train.steps if train.steps is not None else train.epochs * per_epoch
        gradient = train.tol is not None and batch is not None  # full batch: the state has the gradient
        every = train.eval_every
        if every == "auto":
            every = auto_eval_every(n_train, n_val, batch, gradient, train.log_every, total)
        return cls(total, per_epoch, batch, train.log_every, every, gradient)

    def point_at_or_after(self, step: int) -> int:
        """The first log point or evaluation at or after ``step``."""
        return min(-(-step // self.log_every) * self.log_every, -(-step // self.eval_every) * self.eval_every,
                   self.total_steps)

    def evaluates_at(self, step: int) -> bool:
        return step > 0 and (step % self.eval_every == 0 or step >= self.total_steps)


def auto_eval_every(n_train: int, n_val: int, batch: Optional[int], gradient: bool, log_every: int,
                    total_steps: int) -> int:
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


def with_norm(value_and_grad: tuple) -> tuple:
    """(objective, gradient) -> (objective, gradient, gradient norm): computed once, read by every consumer."""
    value, grads = value_and_grad
    return value, grads, optax.tree.norm(grads)


def make_train_step(objective: Callable, optimizer, plan: Plan, n_train: int, lbfgs: bool,
                    shard_rows: Callable = lambda rows: rows, shuffle_mode: str = "full",
                    streamed: bool = False) -> Callable:
    """train_step(state, data) -> (state, (objective, gradient norm)) of one step, on the params it started from.

    ``shard_rows`` splits the rows a step works on across the devices (``Topology.shard_rows``). A minibatch
    is gathered from the training split on the device, in the epoch order of ``shuffle_mode``; a ``streamed``
    step instead takes its minibatch from the group ``gradfit.data.feed`` put there (the same rows).
    """

    def full_batch_step(state: TrainState, data: dict):
        value, grads, norm = state.current

        def loss_fn(params):
            return objective(params, shard_rows(data["x"]), shard_rows(data["y"]))

        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=value, grad=grads,
                                              value_fn=loss_fn)
        params = optax.apply_updates(state.params, updates)
        if lbfgs:  # its line search already evaluated the accepted point
            current = (optax.tree_utils.tree_get(opt_state, "value"), optax.tree_utils.tree_get(opt_state, "grad"))
        else:
            current = jax.value_and_grad(loss_fn)(params)
        return TrainState(params, opt_state, state.step + 1, with_norm(current)), (value, norm)

    def minibatch(step, data: dict):
        if streamed:
            k = step - data["first_step"]
            return shard_rows(data["x"][k]), shard_rows(data["y"][k])
        epoch, position = jnp.divmod(step, plan.steps_per_epoch)
        # every row once per epoch, in an order keyed by (seed, epoch): resumable and reproducible
        # each device computes only its share of the positions, then gathers its rows of the replicated data
        positions = shard_rows(position * plan.batch_size + jnp.arange(plan.batch_size))
        rows = shuffle.order(shuffle_mode, jax.random.fold_in(data["shuffle_key"], epoch), n_train, positions)
        return shard_rows(data["x"][rows]), shard_rows(data["y"][rows])

    def minibatch_step(state: TrainState, data: dict):
        x, y = minibatch(state.step, data)
        value, grads = jax.value_and_grad(objective)(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), (value, optax.tree.norm(grads))

    return full_batch_step if plan.full_batch else minibatch_step


MAX_WINDOWS = 128  # log points one chunk can report
WINDOW_ROWS = ("objective_sum", "grad_norm_sum", "learning_rate", "objective", "train_loss", "grad_norm")


def make_chunk(train_step: Callable, plan: Plan, l2: float, schedule: Optional[Callable],
               tol: Optional[float] = None) -> Callable:
    """chunk(state, data, num_steps) -> (state, metrics): ``num_steps`` steps, with the metrics of every log point.

    The steps fall into log windows that end at the multiples of ``log_every`` and at the chunk's end; a chunk
    covers at most ``MAX_WINDOWS`` of them, so one dispatch can serve many log points. ``metrics["windows"]``
    holds one column per window and one row per ``WINDOW_ROWS`` entry: the sums over the window's steps of the
    minibatch objective and gradient norm, the learning rate of its last step and, for full batch, the
    objective, data loss and gradient norm at its end. ``num_steps`` is traced: one program serves every chunk.
    A full-batch chunk with ``tol`` stops after the first step that ends with a gradient norm below it
    (``metrics["step"]`` says where the chunk stopped).
    """

    def chunk(state: TrainState, data: dict, num_steps):
        dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
        zero = jnp.zeros((), dtype)
        first_window, end = state.step // plan.log_every, state.step + num_steps

        def going(state: TrainState, until):
            go = state.step < until
            if plan.full_batch and tol is not None:
                go &= state.current[2] >= tol  # the very norm its log record shows
            return go

        def step(carry):  # running sums in the carry: a step adds two scalars to what it computes anyway
            state, objective_sum, norm_sum = carry
            state, (value, norm) = train_step(state, data)
            return state, objective_sum + value, norm_sum + norm

        def window(carry):  # the steps of one log window, then its column of numbers
            state, windows, w = carry
            until = jnp.minimum((first_window + w + 1) * plan.log_every, end)

            def partial_window(state):
                return jax.lax.while_loop(lambda c: going(c[0], until), step, (state, zero, zero))

            if plan.full_batch:  # steps are whole passes over the data; tol may stop the window early
                state, objective_sum, norm_sum = partial_window(state)
            else:  # a whole window runs a loop of known length, which XLA runs without a condition per step
                state, objective_sum, norm_sum = jax.lax.cond(
                    until - state.step == plan.log_every,
                    lambda state: jax.lax.fori_loop(0, plan.log_every, lambda _, c: step(c), (state, zero, zero)),
                    partial_window, state)
            if schedule is not None:
                lr = schedule(jnp.maximum(state.step - 1, 0))
            else:  # lbfgs: the step size its line search accepted last
                lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
            column = [objective_sum, norm_sum, lr]
            if plan.full_batch:
                current, _, norm = state.current
                column += [current, current - l2_penalty(state.params, l2), norm]
            column = jnp.stack([jnp.asarray(c, dtype) for c in column])
            return state, windows.at[:len(column), w].set(column), w + 1

        windows = jnp.zeros((len(WINDOW_ROWS), MAX_WINDOWS), dtype)
        state, windows, _ = jax.lax.while_loop(lambda c: going(c[0], end), window, (state, windows, 0))
        metrics = {"windows": windows, "step": state.step,
                   "finite": jnp.all(jnp.isfinite(windows)) & _all_finite(state.params)}
        if plan.full_batch:  # the values at the chunk's end: all a chunk that takes no step has to report
            current, _, norm = state.current
            metrics["end"] = jnp.stack([current, current - l2_penalty(state.params, l2), norm])
            metrics["finite"] &= jnp.isfinite(metrics["end"]).all()
        return state, metrics

    return chunk


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


EVAL_PARTS = ("train", "gradient", "val", "test", "probe")


def eval_parts(**chosen: bool) -> dict:
    """The ``parts`` argument of ``evaluate``: a flag per part, False unless chosen."""
    unknown = set(chosen) - set(EVAL_PARTS)
    if unknown:
        raise ValueError(f"unknown evaluation parts {sorted(unknown)}; choose from {EVAL_PARTS}")
    return {part: np.bool_(chosen.get(part, False)) for part in EVAL_PARTS}


def make_evaluate(model: Model, l2: float, block_rows: int, shard_rows: Callable = lambda rows: rows) -> Callable:
    """evaluate(params, data, parts) -> metrics over whole splits, in blocks of ``block_rows`` rows.

    Parts: ``train`` (objective and data loss over the training split), ``gradient`` (with ``train``: the norm
    of the full-split gradient), ``val`` and ``test`` (loss and the count of correct rows: accuracies are exact
    fractions on the host), ``probe`` (the objective over the first ``PROBE_ROWS`` training rows, which a
    resume recomputes). Parts not asked for come back as NaN (counts as -1). Each block's rows are split
    across the devices by ``shard_rows``.
    """

    objective = make_objective(model.apply, l2)
    sums = BlockSums(model, l2)

    def forward(params, x, y):
        loss_sum, correct = _blocked_sum(lambda xb, yb, w: sums.forward(params, xb, yb, w), x, y, block_rows,
                                         shard_rows)
        return loss_sum / x.shape[0], correct

    def train_metrics(params, x, y, gradient: bool):
        if gradient:
            total = _blocked_sum(lambda xb, yb, w: sums.loss_and_grad(params, xb, yb, w), x, y, block_rows, shard_rows)
        else:
            total = _blocked_sum(lambda xb, yb, w: sums.loss(params, xb, yb, w), x, y, block_rows, shard_rows)
        return sums.train_metrics(params, total, x.shape[0], gradient)

    def evaluate(params, data: dict, parts: dict) -> dict:
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        nan, none = jnp.full((), jnp.nan, dtype), jnp.full((), -1, jnp.int32)
        x, y = data["x"], data["y"]
        skipped = {"objective": nan, "train_loss": nan, "grad_norm": nan}
        out = jax.lax.cond(
            parts["train"],
            lambda: jax.lax.cond(parts["gradient"], lambda: train_metrics(params, x, y, True),
                                 lambda: train_metrics(params, x, y, False)),
            lambda: skipped)
        for split in ("val", "test"):
            if data[f"y_{split}"].shape[0] == 0:  # static: an empty split has nothing to evaluate
                out[f"{split}_loss"], out[f"{split}_correct"] = nan, none
                continue
            loss, correct = jax.lax.cond(parts[split],
                                         lambda s=split: forward(params, data[f"x_{s}"], data[f"y_{s}"]),
                                         lambda: (nan, none))
            out[f"{split}_loss"], out[f"{split}_correct"] = loss, correct
        rows = min(PROBE_ROWS, x.shape[0])
        out["probe"] = jax.lax.cond(
            parts["probe"], lambda: objective(params, shard_rows(x[:rows]), shard_rows(y[:rows])).astype(dtype),
            lambda: nan)
        return out

    return evaluate


class BlockSums:
    """The sums an evaluation adds up over row blocks (rows where ``weight`` is False are not counted), and the
    metrics made of them: shared by the in-memory evaluation and the streamed one, so both compute alike."""

    def __init__(self, model: Model, l2: float):
        self.model, self.l2 = model, l2

    def forward(self, params, xb, yb, weight):
        """(loss sum, count of correct rows) of a validation or test block."""
        logits = self.model.apply(params, xb)
        return (jnp.sum(jnp.where(weight, row_losses(logits, yb), 0)),
                jnp.sum(weight & row_correct(logits, yb), dtype=jnp.int32))

    def loss(self, params, xb, yb, weight):
        return jnp.sum(jnp.where(weight, row_losses(self.model.apply(params, xb), yb), 0))

    def loss_and_grad(self, params, xb, yb, weight):
        return jax.value_and_grad(self.loss)(params, xb, yb, weight)

    def train_metrics(self, params, total, n: int, gradient: bool) -> dict:
        """Objective, data loss and (with ``gradient``) gradient norm over ``n`` rows from their block sums."""
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        penalty, penalty_grad = jax.value_and_grad(lambda p: jnp.asarray(l2_penalty(p, self.l2), dtype))(params)
        if gradient:
            loss_sum, grad_sum = total
            grads = jax.tree_util.tree_map(lambda g, pg: g / n + pg, grad_sum, penalty_grad)
            norm = optax.tree.norm(grads)
        else:
            loss_sum = total
            norm = jnp.full((), jnp.nan, loss_sum.dtype)
        loss = loss_sum / n
        return {"objective": loss + penalty, "train_loss": loss, "grad_norm": norm}


def block_starts(n: int, block: int) -> list[tuple[int, int]]:
    """(start, first counted row) of each evaluation block over ``n`` rows (``_blocked_sum``'s blocks)."""
    if n <= block:
        return [(0, 0)]
    return [(min(i * block, n - block), i * block) for i in range(-(-n // block))]


def make_streamed_evaluate(model: Model, l2: float, block: int, dataset, dtypes: tuple, put: Callable,
                           shard_rows: Callable = lambda rows: rows) -> Callable:
    """``evaluate(params, data, parts)`` for streamed data (``data`` is ignored): the same metrics, in the same
    blocks (``block_starts``), each block read from disk and summed by its own compiled program."""
    sums = BlockSums(model, l2)
    objective = make_objective(model.apply, l2)
    programs = {name: jax.jit(lambda p, x, y, w, f=getattr(sums, name): f(p, shard_rows(x), shard_rows(y),
                                                                           shard_rows(w)))
                for name in ("forward", "loss", "loss_and_grad")}
    probe = jax.jit(lambda p, x, y: objective(p, shard_rows(x), shard_rows(y)))
    probe_rows = dataset.train.take(np.arange(min(PROBE_ROWS, len(dataset.train))), *dtypes)

    def split_sum(name: str, params, split):
        total = None
        for start, counted in block_starts(len(split), block):
            rows = np.arange(start, min(start + block, len(split)))
            x, y = split.take(rows, *dtypes)
            part = programs[name](params, *put((x, y, rows >= counted)))
            total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
        return total

    def evaluate(params, data, parts: dict) -> dict:
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        nan, none = jnp.full((), jnp.nan, dtype), jnp.full((), -1, jnp.int32)
        out = {"objective": nan, "train_loss": nan, "grad_norm": nan}
        if parts["train"]:
            gradient = bool(parts["gradient"])
            total = split_sum("loss_and_grad" if gradient else "loss", params, dataset.train)
            out = sums.train_metrics(params, total, len(dataset.train), gradient)
        for name in ("val", "test"):
            split = getattr(dataset, name)
            if parts[name] and len(split):
                loss_sum, correct = split_sum("forward", params, split)
                out[f"{name}_loss"], out[f"{name}_correct"] = loss_sum / len(split), correct
            else:
                out[f"{name}_loss"], out[f"{name}_correct"] = nan, none
        out["probe"] = probe(params, *put(probe_rows)).astype(dtype) if parts["probe"] else nan
        return out

    return evaluate


def _blocked_sum(fn: Callable, x, y, block: int, shard_rows: Callable):
    """The sum over fixed-size row blocks of ``fn(x_block, y_block, weight)``, a pytree of sums.

    The last block is shifted back to end at the last row rather than padded (no copy of the data); ``weight``
    is False for its rows that the previous block already counted. ``shard_rows`` splits each block's rows.
    """
    n = x.shape[0]
    if n <= block:
        return fn(shard_rows(x), shard_rows(y), shard_rows(jnp.ones((n,), bool)))
    count = -(-n // block)

    def body(i, total):
        start = jnp.minimum(i * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, start, block)
        yb = jax.lax.dynamic_slice_in_dim(y, start, block)
        weight = start + jnp.arange(block) >= i * block
        return jax.tree_util.tree_map(jnp.add, total, fn(shard_rows(xb), shard_rows(yb), shard_rows(weight)))

    shapes = jax.eval_shape(fn, x[:block], y[:block], jnp.ones((block,), bool))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.fori_loop(0, count, body, zeros)


def block_rows(n_features: int, hidden: tuple = ()) -> int:
    """Rows per evaluation block: ``BLOCK_ELEMENTS`` over the widest layer (at least 256 rows)."""
    return max(256, BLOCK_ELEMENTS // max(n_features, *hidden, 1))


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written to disk."""

    config: GradfitConfig
    precision: precision.Precision
    dataset: Dataset
    model: Model
    plan: Plan
    topology: mesh.Topology  # the devices' mesh; parameters, optimizer state and data are replicated on it
    state: TrainState  # the initial state (or a template to restore a checkpoint into)
    data: dict  # device arrays: x, y, x_val, y_val, x_test, y_test, shuffle_key
    chunk: Callable  # uncompiled: (state, train_data, num_steps) -> (state, metrics)
    evaluate: Callable  # uncompiled: (params, data, parts) -> metrics
    train_step: Callable  # one step, (state, data) -> (state, (objective, grad norm)), uncompiled (for benchmarks)
    objective: Callable  # (params, x, y) -> regularized loss
    feed: Optional[Feeder] = None  # streamed data: the groups of minibatches the chunks read

    @property
    def device(self):
        """The mesh's first device: what a single-device consumer (a benchmark peer, the memory check) uses."""
        return self.topology.devices[0]

    @property
    def train_data(self) -> dict:
        """What the chunk reads: each array passed to a program costs its dispatch a few microseconds (streamed:
        zeros shaped like a group, to compile for)."""
        if self.feed is not None:
            return self.feed.template()
        return {key: self.data[key] for key in ("x", "y", "shuffle_key")}

    def chunk_data(self, step: int) -> dict:
        """What the chunk that starts at ``step`` reads."""
        return self.train_data if self.feed is None else self.feed.group(step)


def prepare(config: GradfitConfig) -> Prepared:
    """Load and check the data, pick the device, size the plan and build the initial state.

    Arrays are made under the run's precision (x64 for float64 configs); trace and run the programs under the
    same setting (``Prepared.precision.scope()``).
    """
    with precision.of(config).scope():
        return _prepare(config)


def _prepare(config: GradfitConfig) -> Prepared:
    loggers.check_available(config.train.loggers)  # a missing tensorboardX is found before any data is read
    chosen = precision.of(config)
    topology = mesh.select(config.runtime.device, config.runtime.devices)
    device = topology.devices[0]  # every device holds a full copy: the first one speaks for all
    dataset = stream.load(config, resources.device_available_bytes(device))
    streamed = isinstance(dataset, stream.StreamedDataset)
    if streamed and topology.process_count > 1:
        raise ConfigError("data.in_memory: streamed data are read by one process; use data.in_memory: true for a "
                          "group of processes (or one process with several devices)")
    topology.check_same_everywhere(lambda: config.model_dump_json() + dataset.digest())
    plan = Plan.from_config(config, len(dataset.train), len(dataset.val))
    topology.check_batch(plan.batch_size)
    resources.check_total_steps(config.train, plan.total_steps, plan.steps_per_epoch)
    if config.train.early_stopping.monitor and len(dataset.val) == 0:
        raise ConfigError(f"train.early_stopping: the validation split of {dataset.name} is empty "
                          f"(data.val_fraction={config.data.val_fraction:g}); raise data.val_fraction")
    # products in the parameters' dtype unless mixed: the objective then serves a check in another precision
    model = build_model(config.model, dataset.n_features, dataset.n_classes,
                        chosen.compute_dtype if chosen.mixed else None)
    mode = stream.shuffle_mode(config, streamed)
    functions = training_functions(config, model, plan, len(dataset.train), topology, mode, streamed)
    hidden = tuple(config.model.hidden) if config.model.kind == "mlp" else ()
    eval_rows = block_rows(dataset.n_features, hidden)
    dtypes = (chosen.param_dtype, chosen.compute_dtype)
    feed = None
    if streamed:
        feed = Feeder(dataset.train, mode, plan.batch_size, plan.steps_per_epoch, plan.total_steps, plan.log_every,
                      dtypes, topology.put)
        evaluate = make_streamed_evaluate(model, config.model.l2, eval_rows, dataset, dtypes, topology.put,
                                          topology.shard_rows)
    else:
        evaluate = make_evaluate(model, config.model.l2, eval_rows, topology.shard_rows)
    # refuse what cannot fit before the data go to the device and the parameters are made
    needed = resources.estimate_run(config, dataset.n_features, dataset.n_classes,
                                    (len(dataset.train), len(dataset.val), len(dataset.test)), plan.batch_size,
                                    eval_rows)
    if streamed:  # on the device: two groups of minibatches (the one in use and the next), not the data
        needed = dataclasses.replace(needed, data=2 * feed.steps * plan.batch_size * dataset.n_features
                                     * chosen.compute_dtype.itemsize)
    resources.check_run(config, needed, resources.device_available_bytes(device), describe_device(device))

    data = {} if streamed else topology.put(_device_arrays(dataset, chosen))

    # one compiled program rather than a dozen eager ops, each compiled on its own; it runs once, so it is
    # compiled without XLA's optimizations (0.5 s instead of 1.3 s for configs/mlp.yaml on 2 CPU cores). Its
    # outputs are distinct buffers (the lbfgs state starts as copies of the params), as donation needs, and
    # committed to the device like the chunk's outputs, so feeding those back never recompiles
    seed = topology.put(np.uint32(config.seed))
    init = jax.jit(functions.initial_state, out_shardings=topology.replicated).lower(seed, data).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    state, data["shuffle_key"] = init(seed, data)
    if feed is not None:
        feed.start(data["shuffle_key"])
    return Prepared(config, chosen, dataset, model, plan, topology, state, data, functions.chunk, evaluate,
                    functions.train_step, functions.objective, feed)


class Functions(NamedTuple):
    """The uncompiled functions of one config's training (see ``training_functions``)."""

    objective: Callable  # (params, x, y) -> regularized loss
    train_step: Callable  # (state, data) -> (state, (objective, gradient norm))
    chunk: Callable  # (state, data, num_steps) -> (state, metrics)
    initial_state: Callable  # (seed, data) -> (state, shuffle key)


def training_functions(config: GradfitConfig, model: Model, plan: Plan, n_train: int, topology: mesh.Topology,
                       mode: str = "full", streamed: bool = False) -> Functions:
    """The objective, step, chunk and initial state of ``config``'s training.

    The values of ``config`` (learning rate, l2, momentum, ...) may be traced arrays (``gradfit.sweeps.run`` builds
    these functions inside ``jax.vmap`` with one value per member); its shapes and choices may not.
    """
    optimizer, schedule = make_optimizer(config.optimizer, plan.total_steps)
    objective = make_objective(model.apply, config.model.l2)
    train_step = make_train_step(objective, optimizer, plan, n_train, config.optimizer.name == "lbfgs",
                                 topology.shard_rows, mode, streamed)
    chunk = make_chunk(train_step, plan, config.model.l2, schedule, config.train.tol)
    param_dtype = precision.of(config).param_dtype

    def initial_state(seed, data):
        init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
        params = model.init(init_key, param_dtype)
        current = None
        if plan.full_batch:
            x, y = topology.shard_rows(data["x"]), topology.shard_rows(data["y"])
            current = with_norm(jax.value_and_grad(objective)(params, x, y))
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), current), shuffle_key

    return Functions(objective, train_step, chunk, initial_state)


def _device_arrays(dataset: Dataset, chosen: precision.Precision) -> dict:
    arrays = {}
    for name, split in (("", dataset.train), ("_val", dataset.val), ("_test", dataset.test)):
        x, y = split_arrays(split, dataset.n_classes, chosen.param_dtype)
        arrays["x" + name], arrays["y" + name] = x.astype(chosen.compute_dtype, copy=False), y
    return arrays


@dataclasses.dataclass(frozen=True)
class Programs:
    """A run's compiled programs, and what compiling them cost."""

    chunk: Callable  # (state, train_data, num_steps) -> (state, metrics); the state is donated
    evaluate: Callable  # (params, data, parts) -> metrics
    trace_time_s: float  # tracing and lowering to StableHLO (Python; no cache can skip it)
    compile_time_s: float  # XLA compilation, or loading from the persistent cache
    cache: str  # "hit", "miss", "partial" (some programs) or "off": JAX's persistent compilation cache


def compile_programs(run: Prepared) -> Programs:
    """Trace, lower and compile the chunk and the evaluation (call under ``run.precision.scope()``)."""
    tick = time.perf_counter()
    # pinned to the mesh, replicated: outputs fed back as inputs never recompile, and host scalars (the step
    # count, the evaluation flags) are placed the same way on every process
    placed = dict(in_shardings=run.topology.replicated, out_shardings=run.topology.replicated)
    lowered = [jax.jit(run.chunk, donate_argnums=0, **placed).trace(run.state, run.train_data, np.int32(0)).lower()]
    if run.feed is None:  # a streamed evaluation compiles its block programs when it first runs
        lowered.append(jax.jit(run.evaluate, **placed).trace(run.state.params, run.data, eval_parts()).lower())
    traced = time.perf_counter()
    with cache_events() as events, ThreadPoolExecutor(len(lowered)) as pool:
        # XLA compiles without the GIL: the two programs side by side take 0.3-0.9 s less on 2 CPU cores
        compiled = list(pool.map(lambda program: program.compile(), lowered))
    evaluate = compiled[1] if run.feed is None else run.evaluate
    return Programs(compiled[0], evaluate, traced - tick, time.perf_counter() - traced, cache_outcome(events))


@contextlib.contextmanager
def cache_events():
    """Collect JAX's persistent-cache events (requests, hits) while the block runs."""
    events: list[str] = []

    def listen(event: str, **kwargs) -> None:
        if event.startswith("/jax/compilation_cache/"):
            events.append(event.rsplit("/", 1)[-1])

    jax.monitoring.register_event_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_listener(listen)


def cache_outcome(events: list[str]) -> str:
    requests, hits = events.count("compile_requests_use_cache"), events.count("cache_hits")
    if requests == 0 or not jax.config.jax_compilation_cache_dir:  # JAX asks even when no folder is set
        return "off"
    return "hit" if hits == requests else "miss" if hits == 0 else "partial"
