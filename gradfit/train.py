"""The compiled training loop.

One jitted program runs ``log_every`` optimizer steps (a ``fori_loop`` over ``train_step``) and then computes
the metrics of a log point, so the host only sees the device once per log point. The state is donated, the data
stays on the device as a jit argument, and minibatches are drawn on the device from a permutation keyed by
(seed, epoch).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

import gradfit
from gradfit.config import GradfitConfig, to_yaml
from gradfit.data import Dataset, load_dataset, split_arrays
from gradfit.device import describe_device, select_device
from gradfit.errors import ConfigError, Interrupted, TrainingFailed
from gradfit.losses import accuracy, data_loss, l2_penalty, make_objective
from gradfit.models import Model, build_model, count_params, named_leaves
from gradfit.optim import make_optimizer
from gradfit import runs


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 (): optimizer steps taken so far
    order: jax.Array  # int32 (n_train,): row order of the current epoch; (0,) when training full-batch


class Callbacks:
    """Progress hooks; the engine prints nothing itself. Override what you need."""

    def on_start(self, info: dict) -> None: ...

    def on_log(self, record: dict) -> None: ...

    def on_end(self, summary: dict) -> None: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps, in what batches; derived from the config and the training-split size."""

    total_steps: int
    steps_per_epoch: int
    batch_size: Optional[int]  # None: full batch
    log_every: int

    @classmethod
    def from_config(cls, config: GradfitConfig, n_train: int) -> "Plan":
        train = config.train
        if train.batch_size is not None and train.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size={train.batch_size} exceeds the {n_train} training rows; "
                "use a smaller batch or null for full batch"
            )
        batch = train.batch_size if train.batch_size not in (None, n_train) else None
        per_epoch = n_train // batch if batch else 1
        total = train.steps if train.steps is not None else train.epochs * per_epoch
        return cls(total, per_epoch, batch, train.log_every)


def make_train_step(objective: Callable, optimizer, plan: Plan, n_train: int, lbfgs: bool) -> Callable:
    """train_step(state, data) -> (state, loss): one gradient step on one (mini)batch."""

    def select_batch(state: TrainState, data: dict):
        if plan.batch_size is None:
            return state.order, data["x"], data["y"]
        epoch, position = jnp.divmod(state.step, plan.steps_per_epoch)
        # a fresh permutation at each epoch start, keyed by (seed, epoch): resumable and reproducible
        order = jax.lax.cond(
            position == 0,
            lambda: jax.random.permutation(jax.random.fold_in(data["shuffle_key"], epoch), n_train).astype(jnp.int32),
            lambda: state.order,
        )
        rows = jax.lax.dynamic_slice(order, (position * plan.batch_size,), (plan.batch_size,))
        return order, data["x"][rows], data["y"][rows]

    def train_step(state: TrainState, data: dict):
        order, x, y = select_batch(state, data)

        def loss_fn(params):
            return objective(params, x, y)

        if lbfgs:  # reuse the value and gradient the line search already computed at these params
            loss, grads = optax.value_and_grad_from_state(loss_fn)(state.params, state=state.opt_state)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, value=loss, grad=grads, value_fn=loss_fn
        )
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, order), loss

    return train_step


def make_chunk(train_step: Callable, objective: Callable, model: Model, l2: float, schedule: Optional[Callable],
               has_val: bool):
    """chunk(state, data, num_steps) -> (state, metrics): num_steps steps, then the log point's metrics.

    ``num_steps`` is a traced scalar, so the last, shorter chunk of a run reuses the same compiled program.
    """

    def chunk(state: TrainState, data: dict, num_steps):
        state, _ = jax.lax.fori_loop(
            0, num_steps, lambda _, carry: train_step(carry[0], data), (state, jnp.zeros((), data["x"].dtype))
        )
        params = state.params
        value, grads = jax.value_and_grad(objective)(params, data["x"], data["y"])
        finite = jnp.isfinite(value) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)])
        )
        if schedule is not None:
            lr = schedule(jnp.maximum(state.step - 1, 0))
        else:  # lbfgs: the step size its line search accepted last
            lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
        metrics = {
            "objective": value,
            "train_loss": value - l2_penalty(params, l2),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": lr,
            "finite": finite,
        }
        if has_val:
            logits = model.apply(params, data["x_val"])
            metrics["val_loss"] = data_loss(logits, data["y_val"])
            metrics["val_accuracy"] = accuracy(logits, data["y_val"])
        return state, metrics

    return chunk


def evaluate(model: Model, params, x, y) -> tuple[Optional[float], Optional[float]]:
    """(loss, accuracy) of params on one split, on the device that holds params; (None, None) if it is empty."""
    if len(y) == 0:
        return None, None
    logits = jax.jit(model.apply)(params, x)
    return float(data_loss(logits, y)), float(accuracy(logits, y))


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written to disk."""

    config: GradfitConfig
    dataset: Dataset
    model: Model
    plan: Plan
    device: Any
    state: TrainState
    data: dict  # device arrays: x, y, x_val, y_val, shuffle_key
    chunk: Callable  # the uncompiled chunk function (for tests and benchmarks)
    train_step: Callable  # one step, (state, data) -> (state, loss), uncompiled (for benchmarks)
    objective: Callable  # (params, x, y) -> regularized loss


def prepare(config: GradfitConfig) -> Prepared:
    """Load and check the data, pick the device, size the plan and build the initial state (no compilation).

    Arrays are made with x64 enabled for float64 configs; trace and run ``chunk`` under the same setting.
    """
    with jax.enable_x64(config.runtime.precision == "float64"):
        return _prepare(config)


def _prepare(config: GradfitConfig) -> Prepared:
    dataset = load_dataset(config)
    device = select_device(config.runtime.device)
    plan = Plan.from_config(config, len(dataset.train))
    optimizer, schedule = make_optimizer(config.optimizer, plan.total_steps)
    dtype = jnp.float64 if config.runtime.precision == "float64" else jnp.float32
    model = build_model(config.model, dataset.n_features, dataset.n_classes)

    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
    data = jax.device_put(_device_arrays(dataset, dtype, shuffle_key), device)
    with jax.default_device(device):
        params = model.init(init_key, dtype)
        order = jnp.zeros((len(dataset.train) if plan.batch_size else 0,), jnp.int32)
        state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), order)
        # optimizer states may alias the params (lbfgs does); donation needs every buffer distinct
        state = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), state)
    # committed like the outputs of the compiled step, so feeding those back never recompiles
    state = jax.device_put(state, device)

    objective = make_objective(model.apply, config.model.l2)
    train_step = make_train_step(objective, optimizer, plan, len(dataset.train), config.optimizer.name == "lbfgs")
    chunk = make_chunk(train_step, objective, model, config.model.l2, schedule, has_val=len(dataset.val) > 0)
    return Prepared(config, dataset, model, plan, device, state, data, chunk, train_step, objective)


@dataclasses.dataclass
class Outcome:
    """How the loop ended."""

    step: int = 0
    status: str = "completed"  # completed | failed | interrupted
    stop_reason: str = "completed all steps"
    last: dict = dataclasses.field(default_factory=dict)  # the last log record
    last_finite_objective: Optional[float] = None
    train_time: float = 0.0  # seconds inside compiled chunks, compilation excluded


def fit(config: GradfitConfig, out_dir: str = "runs", callbacks: Optional[Callbacks] = None) -> dict:
    """Train as the config says and write a run directory; returns the summary (also in summary.json).

    Raises:
        GradfitError: bad data, settings or device (before the run directory is created).
        TrainingFailed: the loss or parameters became non-finite (summary.json says why).
    """
    with jax.enable_x64(config.runtime.precision == "float64"):
        return _fit(config, out_dir, callbacks or Callbacks())


def _fit(config: GradfitConfig, out_dir: str, callbacks: Callbacks) -> dict:
    started = time.perf_counter()
    run = prepare(config)  # everything that can reject the input happens before the run directory exists
    tick = time.perf_counter()
    compiled = jax.jit(run.chunk, donate_argnums=0).lower(run.state, run.data, jnp.int32(0)).compile()
    compile_time = time.perf_counter() - tick

    run_dir = runs.create_run_dir(out_dir, config.name)
    device_name = describe_device(run.device)
    runs.write_atomic(run_dir / "config.yaml", to_yaml(config, _config_header(device_name)))
    runs.write_json(run_dir / "preprocessing.json", run.dataset.preprocessing())
    callbacks.on_start({
        "run_dir": str(run_dir), "device": device_name, "total_steps": run.plan.total_steps,
        "steps_per_epoch": run.plan.steps_per_epoch, "num_params": count_params(run.state.params),
        "compile_time_s": compile_time, "dataset": run.dataset.name, "model": config.model.kind,
    })

    # dispatch a chunk, read its metrics back, log, decide whether to go on; the first chunk (0 steps)
    # logs the starting point. SIGINT/SIGTERM only set a flag, so the chunk in flight always completes.
    state, out = run.state, Outcome()
    with _StopRequests() as stop:
        while True:
            n = min(run.plan.log_every, run.plan.total_steps - out.step) if out.last else 0
            tick = time.perf_counter()
            state, metrics = compiled(state, run.data, jnp.int32(n))
            metrics = jax.device_get(metrics)
            out.train_time += time.perf_counter() - tick
            out.step += n
            out.last = _log_record(metrics, out.step, run.plan, time.perf_counter() - started)
            runs.append_jsonl(run_dir / "metrics.jsonl", out.last)
            callbacks.on_log(out.last)
            if metrics["finite"]:
                out.last_finite_objective = out.last["objective"]
            else:
                out.status = "failed"
                out.stop_reason = f"diverged: non-finite loss or parameters at step {out.step}"
                break
            if stop.signal_name:
                out.status, out.stop_reason = "interrupted", f"{stop.signal_name} at step {out.step}"
                break
            if config.train.tol is not None and out.last["grad_norm"] < config.train.tol:
                out.stop_reason = f"converged: grad_norm {out.last['grad_norm']:.3g} < tol {config.train.tol:g}"
                break
            if out.step >= run.plan.total_steps:
                break
    summary = _finish(run_dir, run, state, out, device_name, started, compile_time)
    callbacks.on_end(summary)
    if out.status == "interrupted":
        raise Interrupted(f"{out.stop_reason}; parameters so far saved in {run_dir}", summary)
    if out.status == "failed":
        last_good = "none" if out.last_finite_objective is None else f"{out.last_finite_objective:.6g}"
        hint = ("check model.l2 and data.standardize" if config.optimizer.name == "lbfgs"
                else "lower optimizer.learning_rate or set optimizer.clip_norm")
        raise TrainingFailed(
            f"training diverged at step {out.step} (last finite objective: {last_good}); {hint}. "
            f"Run directory: {run_dir}", summary
        )
    return summary


class _StopRequests:
    """Within the block, SIGINT and SIGTERM are recorded instead of raised (main thread only)."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _device_arrays(dataset: Dataset, dtype, shuffle_key) -> dict:
    x, y = split_arrays(dataset.train, dataset.n_classes, dtype)
    x_val, y_val = split_arrays(dataset.val, dataset.n_classes, dtype)
    return {"x": x, "y": y, "x_val": x_val, "y_val": y_val, "shuffle_key": shuffle_key}


def _log_record(metrics: dict, step: int, plan: Plan, elapsed: float) -> dict:
    record = {"step": step, "epoch": step / plan.steps_per_epoch}
    for key in ("train_loss", "objective", "val_loss", "val_accuracy", "grad_norm", "learning_rate"):
        value = metrics.get(key)
        record[key] = None if value is None else float(value)
    record["elapsed_s"] = elapsed
    return record


def _finish(run_dir, run: Prepared, state: TrainState, out: Outcome, device_name: str, started: float,
            compile_time: float) -> dict:
    """Save the parameters (unless training failed) and write summary.json; returns the summary."""
    params = jax.device_get(state.params)
    if out.status != "failed":
        runs.save_arrays(run_dir / "params.npz", named_leaves(params))
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    test_loss, test_acc = evaluate(run.model, params, *split_arrays(run.dataset.test, run.dataset.n_classes, dtype))
    config, last = run.config, out.last
    summary = {
        "run_dir": str(run_dir),
        "status": out.status,
        "stop_reason": out.stop_reason,
        "model": config.model.kind,
        "optimizer": config.optimizer.name,
        "dataset": run.dataset.name,
        "device": device_name,
        "precision": config.runtime.precision,
        "num_params": count_params(params),
        "rows": {"train": len(run.dataset.train), "val": len(run.dataset.val), "test": len(run.dataset.test)},
        "steps": out.step,
        "epochs": out.step / run.plan.steps_per_epoch,
        "wall_time_s": time.perf_counter() - started,
        "compile_time_s": compile_time,
        "steps_per_s": out.step / out.train_time if out.train_time > 0 and out.step else None,
        "objective": last.get("objective"),
        "grad_norm": last.get("grad_norm"),
        "final": {
            "train_loss": last.get("train_loss"),
            "val_loss": last.get("val_loss"),
            "val_accuracy": last.get("val_accuracy"),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
        },
        "versions": _versions(),
    }
    runs.write_json(run_dir / "summary.json", summary)
    return summary


def _versions() -> dict:
    import jaxlib

    return {"gradfit": gradfit.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__}


def _config_header(device_name: str) -> str:
    v = _versions()
    return (f"# Resolved gradfit config: every key, defaults included. Re-run with: gradfit train <this file>\n"
            f"# gradfit {v['gradfit']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}; "
            f"device {device_name}\n")
