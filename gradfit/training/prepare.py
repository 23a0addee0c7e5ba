"""Everything a run needs before its first step, built and checked before anything is written to disk.

``prepare(config)`` loads and checks the data, picks the devices, sizes the plan, refuses what cannot fit in
memory and builds the initial state; ``compile_programs`` then compiles the chunk and the evaluation. What the
lower layers need from the config is resolved here, once: the programs get plain values (``Settings``), and
``Prepared`` carries the resolved pieces that both a single run and a sweep (``gradfit.sweeps.run``) build on.

On a mesh of several devices (``gradfit.runtime.mesh``) the state and the data are replicated, and the programs
split the rows they work on across the devices: data parallelism.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gradfit.config.load import GradfitConfig
from gradfit.core import precision
from gradfit.core.losses import row_loss_of
from gradfit.core.models import Model, build_model
from gradfit.data import load
from gradfit.data.dataset import Dataset, InMemoryDataset, shuffle_mode, split_arrays
from gradfit.data.feed import Feeder
from gradfit.data.streamed import StreamedDataset
from gradfit.data.supplied import Supplied
from gradfit.errors import ConfigError
from gradfit.runs import loggers
from gradfit.runtime import compile_cache, mesh, resources
from gradfit.training import reuse
from gradfit.training.evaluate import block_rows, eval_parts, make_evaluate, make_streamed_evaluate
from gradfit.training.plan import Plan
from gradfit.training.programs import Functions, Settings, TrainState, training_functions


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
    feed: Feeder | None = None  # streamed data: the groups of minibatches the chunks read
    eval_rows: int = 0  # rows of one evaluation block
    memory: resources.MemoryEstimate | None = None  # the device memory the run was estimated to need
    reuse_key: str | None = None  # programs kept in this process under this key are this run's (``reuse``)

    @property
    def device(self) -> Any:
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

    def functions(self, config: GradfitConfig, shuffle_mode: str) -> Functions:
        """The training functions of ``config`` (this run's, or one whose numbers are traced arrays) on this run's
        data, model, plan and devices, with minibatches in the order of ``shuffle_mode``."""
        return training_functions(
            settings_of(config, target_std(self.dataset)),
            self.model,
            self.plan,
            len(self.dataset.train),
            self.topology.shard_rows,
            shuffle_mode,
        )

    def evaluator(self, l2: Any, l1: Any = 0.0) -> Callable:
        """The in-memory evaluation of this run's model with the penalties ``l2`` and ``l1`` (numbers or traced
        arrays)."""
        return make_evaluate(self.model, l2, self.eval_rows, self.topology.shard_rows, self.config.model.regression, l1)


def settings_of(config: GradfitConfig, target_std: float = 1.0) -> Settings:
    """What the training programs take from ``config``. A numeric target is standardized by ``target_std``, and the
    gradient norms a user reads are in its units: the programs compare their own norm with ``tol / target_std``."""
    tol = None if config.train.tol is None else config.train.tol / target_std
    return Settings(config.optimizer, config.model.l2, tol, precision.of(config).param_dtype, config.model.l1)


def prepare(config: GradfitConfig, supplied: Supplied | None = None, reuse_programs: bool = False) -> Prepared:
    """Load and check the data (``supplied``: the rows of ``data.source: memory``), pick the device, size the plan
    and build the initial state. ``reuse_programs``: take (and keep) compiled programs kept in this process for runs
    of the same key (``gradfit.training.reuse``).

    Arrays are made under the run's precision (x64 for float64 configs); trace and run the programs under the
    same setting (``Prepared.precision.scope()``).

    Raises:
        GradfitError: bad data, settings or device, or a run that cannot fit in memory.
    """
    with precision.of(config).scope():
        return _prepare(config, supplied, reuse_programs)


def target_std(dataset: Dataset) -> float:
    """The standard deviation a numeric target was divided by (1.0 for classes): the loss's and the metrics' scale."""
    return 1.0 if dataset.target_scale is None else dataset.target_scale[1]


def _prepare(config: GradfitConfig, supplied: Supplied | None, reuse_programs: bool) -> Prepared:
    loggers.check_available(config.train.loggers)  # a missing tensorboardX is found before any data is read
    chosen = precision.of(config)
    topology = mesh.select(config.runtime.device, config.runtime.devices)
    dataset = _load(config, topology, supplied)
    settings = settings_of(config, target_std(dataset))
    streamed = isinstance(dataset, StreamedDataset)
    plan = _plan(config, dataset, topology)
    # products in the parameters' dtype unless mixed: the objective then serves a check in another precision
    row_loss = row_loss_of(config.model, target_std(dataset))
    model = build_model(
        config.model, dataset.n_features, dataset.n_classes, chosen.compute_dtype if chosen.mixed else None, row_loss
    )
    mode = shuffle_mode(config, streamed)
    functions = training_functions(settings, model, plan, len(dataset.train), topology.shard_rows, mode, streamed)
    hidden = tuple(config.model.hidden) if config.model.kind == "mlp" else ()
    eval_rows = block_rows(dataset.n_features, hidden)
    dtypes = (chosen.param_dtype, chosen.compute_dtype)
    feed = None
    if isinstance(dataset, StreamedDataset):
        feed = Feeder(
            dataset.train,
            mode,
            plan.minibatch_size,
            plan.steps_per_epoch,
            plan.total_steps,
            plan.log_every,
            dtypes,
            topology.put,
            chosen.scope,
        )
        evaluate = make_streamed_evaluate(
            model,
            settings.l2,
            eval_rows,
            dataset,
            dtypes,
            topology.put,
            topology.shard_rows,
            config.model.regression,
            settings.l1,
        )
    else:
        evaluate = make_evaluate(
            model, settings.l2, eval_rows, topology.shard_rows, config.model.regression, settings.l1
        )
    memory = _check_memory(config, dataset, plan, eval_rows, feed, chosen, topology)
    data = topology.put(_device_arrays(dataset, chosen)) if isinstance(dataset, InMemoryDataset) else {}
    run_key = None
    if reuse_programs and feed is None:
        built_from = {  # everything training_functions, build_model and make_evaluate take besides the config
            "features": dataset.n_features,
            "classes": dataset.n_classes,
            "train_rows": len(dataset.train),
            "plan": dataclasses.asdict(plan),
            "target_std": repr(target_std(dataset)),
            "eval_rows": eval_rows,
            "shuffle": mode,
        }
        run_key = reuse.key(config, data, built_from, topology.describe())
    state, data["shuffle_key"] = _initial_state(functions, config.seed, topology, data, run_key)
    if feed is not None:
        feed.start(data["shuffle_key"])
    return Prepared(
        config,
        chosen,
        dataset,
        model,
        plan,
        topology,
        state,
        data,
        functions.chunk,
        evaluate,
        functions.train_step,
        functions.objective,
        feed,
        eval_rows,
        memory,
        run_key,
    )


def _load(config: GradfitConfig, topology: mesh.Topology, supplied: Supplied | None) -> Dataset:
    """The run's data, in memory or streamed, the same in every process of a distributed run."""
    dataset = load.load(config, resources.device_available_bytes(topology.devices[0]), supplied)
    if isinstance(dataset, StreamedDataset) and topology.process_count > 1:
        raise ConfigError(
            "data.in_memory: streamed data are read by one process; use data.in_memory: true for a "
            "group of processes (or one process with several devices)"
        )
    topology.check_same_everywhere(lambda: config.model_dump_json() + dataset.digest())
    return dataset


def _plan(config: GradfitConfig, dataset: Dataset, topology: mesh.Topology) -> Plan:
    """The run's schedule, checked against the devices, the step counter and the validation split."""
    plan = Plan.from_config(config, len(dataset.train), len(dataset.val))
    topology.check_batch(plan.batch_size)
    resources.check_total_steps(config.train, plan.total_steps, plan.steps_per_epoch)
    if config.train.early_stopping.monitor and len(dataset.val) == 0:
        raise ConfigError(
            f"train.early_stopping: the validation split of {dataset.name} is empty "
            f"(data.val_fraction={config.data.val_fraction:g}); raise data.val_fraction"
        )
    return plan


def _check_memory(
    config: GradfitConfig,
    dataset: Dataset,
    plan: Plan,
    eval_rows: int,
    feed: Feeder | None,
    chosen: precision.Precision,
    topology: mesh.Topology,
) -> resources.MemoryEstimate:
    """Refuse what cannot fit before the data go to the device and the parameters are made; the estimate."""
    rows = (len(dataset.train), len(dataset.val), len(dataset.test))
    needed = resources.estimate_run(config, dataset.n_features, dataset.n_classes, rows, plan.batch_size, eval_rows)
    if feed is not None:  # on the device: two groups of minibatches (the one in use and the next), not the data
        needed = dataclasses.replace(
            needed, data=2 * feed.steps * plan.minibatch_size * dataset.n_features * chosen.compute_dtype.itemsize
        )
    device = topology.devices[0]  # every device holds a full copy: the first one speaks for all
    resources.check_run(config, needed, resources.device_available_bytes(device), mesh.describe_device(device))
    return needed


def _initial_state(
    functions: Functions, seed: int, topology: mesh.Topology, data: dict, run_key: str | None = None
) -> tuple[TrainState, Any]:
    """The initial state and the shuffle key, made on the devices from ``seed``.

    One compiled program rather than a dozen eager ops, each compiled on its own; it runs once, so it is compiled
    without XLA's optimizations (0.5 s instead of 1.3 s for configs/mlp.yaml on 2 CPU cores). Its outputs are
    distinct buffers (the lbfgs state starts as copies of the params), as donation needs, and committed to the
    device like the chunk's outputs, so feeding those back never recompiles.
    """
    placed_seed = topology.put(np.uint32(seed))
    init = reuse.get(run_key, "init")
    if init is None:
        init = (
            jax.jit(functions.initial_state, out_shardings=topology.replicated)
            .lower(placed_seed, data)
            # XLA takes integer options; jax's CompilerOptions type admits only str and bool
            .compile(compiler_options={"xla_backend_optimization_level": 0})  # type: ignore[dict-item]
        )
        reuse.put(run_key, "init", init)
    return init(placed_seed, data)


def _device_arrays(dataset: InMemoryDataset, chosen: precision.Precision) -> dict:
    arrays = {}
    for name, split in (("", dataset.train), ("_val", dataset.val), ("_test", dataset.test)):
        x, y = split_arrays(split, dataset.n_classes, chosen.param_dtype)
        arrays["x" + name], arrays["y" + name] = x.astype(chosen.compute_dtype, copy=False), y
    return arrays


@dataclasses.dataclass(frozen=True)
class Programs:
    """A run's compiled programs, and what compiling them cost."""

    chunk: Callable | None  # (state, train_data, num_steps) -> (state, metrics); the state is donated (None: a
    # sweep member's, whose group runs the chunk)
    evaluate: Callable  # (params, data, parts) -> metrics
    trace_time_s: float  # tracing and lowering to StableHLO (Python; no cache can skip it)
    compile_time_s: float  # XLA compilation, or loading from the persistent cache
    cache: str  # "hit", "miss", "partial" (some programs) or "off": JAX's persistent compilation cache; "reused":
    # kept in this process (``gradfit.training.reuse``), not compiled again


def compile_programs(run: Prepared) -> Programs:
    """Trace, lower and compile the chunk and the evaluation (call under ``run.precision.scope()``), or take those
    kept for ``run.reuse_key`` (cache "reused")."""
    kept = reuse.get(run.reuse_key, "chunk"), reuse.get(run.reuse_key, "evaluate")
    if kept[0] is not None and kept[1] is not None:
        return Programs(kept[0], kept[1], 0.0, 0.0, "reused")
    tick = time.perf_counter()
    # pinned to the mesh, replicated: outputs fed back as inputs never recompile, and host scalars (the step
    # count, the evaluation flags) are placed the same way on every process
    replicated = run.topology.replicated
    chunk = jax.jit(run.chunk, donate_argnums=0, in_shardings=replicated, out_shardings=replicated)
    lowered = [chunk.trace(run.state, run.train_data, np.int32(0)).lower()]
    if run.feed is None:  # a streamed evaluation compiles its block programs when it first runs
        jitted = jax.jit(run.evaluate, in_shardings=replicated, out_shardings=replicated)
        lowered.append(jitted.trace(run.state.params, run.data, eval_parts()).lower())
    traced = time.perf_counter()
    compiled, cache = compile_cache.compile_all(lowered, [None] * len(lowered))
    evaluate = compiled[1] if run.feed is None else run.evaluate
    reuse.put(run.reuse_key, "chunk", compiled[0])
    reuse.put(run.reuse_key, "evaluate", evaluate)
    return Programs(compiled[0], evaluate, traced - tick, time.perf_counter() - traced, cache)
