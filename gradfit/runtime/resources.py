"""Will the run fit? Step counts against int32, and the memory a run needs against what is available.

Checked before anything big is allocated, so that a config that cannot run is refused with a ``ConfigError``
(exit code 2) naming the key to change, instead of an ``OverflowError``, a ``MemoryError`` or XLA's
``RESOURCE_EXHAUSTED`` after the data were generated or the run directory was made.

The memory estimates are lower bounds: they count only the arrays a run cannot do without (the data on the
device, the parameters with the optimizer's state, a gradient and an update, the activations of one step), not
XLA's temporaries, fragmentation or the host's copies. A run they refuse cannot fit; a run they pass may still
not, but the sizes that turn up by mistake (a layer of a million units, 10**9 rows) are refused cleanly.

No jax here: devices are passed in and only asked for ``platform`` and ``memory_stats()``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from gradfit.config.data import SyntheticConfig
from gradfit.config.schema import GradfitConfig, OptimizerConfig, TrainConfig
from gradfit.config.section import MAX_SIZE, MAX_STEPS
from gradfit.core import precision
from gradfit.errors import ConfigError
from gradfit.files import format_bytes

#: parameter-sized arrays in each optimizer's state (optax's, with gradfit's settings)
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}
NAME_BYTES = 56  # a feature name "x123" of the synthetic data: a str object and a list slot in CPython
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


# ------------------------------------------------------------------------------------------- step counts


def check_total_steps(train: TrainConfig, total_steps: int, steps_per_epoch: int) -> None:
    """Refuse a run whose total steps (``epochs`` x steps per epoch) the int32 step counter cannot hold.

    ``train.steps`` and ``train.epochs`` are bounded by the schema; their product with the batches of an
    epoch is only known once the data are.

    Raises:
        ConfigError: naming ``train.epochs``, the steps it gives and the limit.
    """
    if total_steps <= MAX_STEPS:
        return
    key, value = ("train.epochs", train.epochs) if train.steps is None else ("train.steps", train.steps)
    raise ConfigError(
        f"{key}={value:,} gives {total_steps:,} steps ({steps_per_epoch:,} per epoch); a run takes at most "
        f"{MAX_STEPS:,} (2**30: the compiled training loop counts steps in int32); lower {key}"
        + ("" if train.batch_size is None else " or raise train.batch_size")
    )


# ------------------------------------------------------------------------------------------ model sizes


def output_width(n_classes: int) -> int:
    """Outputs per row: one for two classes (the binary logit) or a numeric target (no classes), else one per
    class."""
    return 1 if n_classes <= 2 else n_classes


def layer_widths(kind: str, n_classes: int, hidden: tuple = ()) -> tuple[int, ...]:
    """Output width of each layer, input to output: ``(1,)`` for logistic, ``(*hidden, K or 1)`` for mlp."""
    if kind == "logistic":
        return (1,)
    return (*hidden, output_width(n_classes))


def parameter_count(kind: str, n_features: int, n_classes: int, hidden: tuple = ()) -> int:
    """Parameters of the model ``gradfit.core.models.build_model`` builds, from the shapes alone.

    logistic: ``d + 1`` (weights and bias); mlp: the sum over layers of ``fan_in * fan_out + fan_out``.
    Python integers: no size overflows, however absurd.
    """
    if kind == "logistic":
        return n_features + 1
    sizes = (n_features, *layer_widths(kind, n_classes, hidden))
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def optimizer_slots(config: OptimizerConfig) -> int:
    """Parameter-sized arrays the optimizer keeps: 0 (sgd) to 2 (adam), ``2 * memory_size + 3`` for lbfgs.

    L-BFGS keeps ``memory_size`` parameter and gradient differences, and its line search the last params,
    update and gradient.
    """
    if config.name == "lbfgs":
        return 2 * config.memory_size + 3
    return OPTIMIZER_SLOTS[config.name]


# ----------------------------------------------------------------------------------------- the estimate


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs at least, by what needs them.

    ``data``: every split's features and labels on the device. ``model``: the parameters, the optimizer's
    state, a gradient and an update (``copies`` parameter-sized arrays of ``parameters`` numbers).
    ``activations``: the larger of a training step's (its minibatch or, full batch, the training split, through
    every layer and back) and an evaluation block's.
    """

    data: int
    model: int
    activations: int
    parameters: int
    copies: int
    largest_split: int = 0  # rows

    @property
    def total(self) -> int:
        return self.data + self.model + self.activations


def estimate_run(
    config: GradfitConfig,
    n_features: int,
    n_classes: int,
    rows: tuple[int, int, int],
    batch_size: int | None,
    eval_rows: int,
) -> MemoryEstimate:
    """The device memory a run needs at least, from the config and the data's shape.

    Args:
        config: the run's config (model, optimizer, precision).
        n_features: columns of the data, d.
        n_classes: classes of the target, K.
        rows: rows of the (train, val, test) splits.
        batch_size: rows of a training step, None for full batch (``Plan.batch_size``).
        eval_rows: rows of an evaluation block (``train.block_rows``).

    Returns:
        a ``MemoryEstimate``, in bytes.
    """
    chosen = precision.of(config)
    param_bytes, compute_bytes = chosen.param_dtype.itemsize, chosen.compute_dtype.itemsize
    label_bytes = param_bytes if n_classes <= 2 else 4  # +-1 or a target in the params' dtype, or int32 class ids
    n_rows = sum(rows)
    data = n_rows * (n_features * compute_bytes + label_bytes)

    kind = config.model.kind
    hidden = tuple(config.model.hidden) if kind == "mlp" else ()
    widths = layer_widths(kind, n_classes, hidden)
    parameters = parameter_count(kind, n_features, n_classes, hidden)
    copies = 1 + optimizer_slots(config.optimizer) + 2  # params, optimizer state, gradient, update
    model = parameters * copies * param_bytes

    # the forward pass keeps every layer's output for the backward pass, which adds at least the gradient of
    # the widest; a minibatch is gathered from the device's copy of the data first
    step_rows = batch_size if batch_size is not None else rows[0]
    step = step_rows * (sum(widths) + max(widths)) * param_bytes
    if batch_size is not None:
        step += batch_size * n_features * compute_bytes
    evaluation = min(eval_rows, max(rows)) * max(widths) * param_bytes  # blocks run one layer at a time
    return MemoryEstimate(data, model, max(step, evaluation), parameters, copies, max(rows))


def synthetic_host_bytes(synthetic: SyntheticConfig) -> int:
    """Host memory that loading the synthetic data needs at least (``gradfit.data.dataset.load_dataset``).

    Twice the float32 features (n x d): the generated ones and the splits' copy of them, which exist together
    (standardization makes a third copy: not counted); the float32 logits (n x K) and the label noise, drawn
    as float64 (n x K) before it is cast; the int64 labels, the float64 true weights (d x K) and a name per
    feature.
    """
    n, d, k = synthetic.n_samples, synthetic.n_features, synthetic.n_classes
    noise = n * k * 8 if synthetic.noise > 0 else 0
    return 2 * n * d * 4 + n * k * 4 + noise + n * 8 + d * k * 8 + d * NAME_BYTES


# -------------------------------------------------------------------------------------------- the checks


def check_synthetic(config: GradfitConfig, available: int | None) -> None:
    """Refuse synthetic data that cannot be generated in ``available`` bytes of host memory (None: unknown).

    Call it before ``gradfit.data.dataset.load_dataset``, which generates the data.

    Raises:
        ConfigError: naming data.synthetic.n_samples and n_features, the memory needed and available.
    """
    if config.data.source != "synthetic" or available is None:
        return
    synthetic = config.data.synthetic
    need = synthetic_host_bytes(synthetic)
    if need <= available:
        return
    n, d, k = synthetic.n_samples, synthetic.n_features, synthetic.n_classes
    lower = f"data.synthetic.n_samples ({n:,}) or data.synthetic.n_features ({d:,})"
    if k > 2 * d:  # the per-class arrays (logits, label noise, true weights) are what is large
        lower = f"data.synthetic.n_classes ({k:,})"
    raise ConfigError(
        f"data.synthetic: {n:,} rows x {d:,} features x {k:,} classes need at least {format_bytes(need)} of host "
        f"memory to load, but {format_bytes(available)} is available; lower {lower}"
    )


def check_run(config: GradfitConfig, estimate: MemoryEstimate, available: int | None, where: str) -> None:
    """Refuse a run whose ``estimate`` exceeds the ``available`` bytes of its device (None: unknown).

    Call it before the data are put on the device and the parameters are made.

    Args:
        config: the run's config: says which key to blame.
        estimate: from ``estimate_run``.
        available: free bytes of the device (``device_available_bytes``).
        where: the device, for the message ("cpu:0").

    Raises:
        ConfigError: naming the key that drives the largest part, the memory needed and available, and a hint.
    """
    if estimate.largest_split > MAX_SIZE:  # data files: synthetic rows are bounded by the schema
        raise ConfigError(
            f"{_data_key(config)}: a split of {estimate.largest_split:,} rows; at most {MAX_SIZE:,} "
            "(2**31 - 1: rows are indexed in int32 on the device)"
        )
    if available is None or estimate.total <= available:
        return
    key, hint = _culprit(config, estimate)
    slots = estimate.copies - 3
    state = f"{slots} of {config.optimizer.name}'s state, " if slots else ""
    parts = (
        f"data {format_bytes(estimate.data)}, parameters {format_bytes(estimate.model)} "
        f"({estimate.parameters:,} x {estimate.copies} copies: weights, {state}gradient, update), "
        f"activations {format_bytes(estimate.activations)}"
    )
    raise ConfigError(
        f"{key}: the run needs at least {format_bytes(estimate.total)} of memory on {where} "
        f"({parts}), but {format_bytes(available)} is available; {hint}"
    )


def _culprit(config: GradfitConfig, estimate: MemoryEstimate) -> tuple[str, str]:
    """(the key with its value, a hint) for the largest part of the estimate."""
    data, model, optimizer, train = config.data, config.model, config.optimizer, config.train
    if data.source == "synthetic":
        rows_key = f"data.synthetic.n_samples={data.synthetic.n_samples:,}"
        columns_key = f"data.synthetic.n_features={data.synthetic.n_features:,}"
    else:
        rows_key = columns_key = _data_key(config)
    largest = max(estimate.data, estimate.model, estimate.activations)
    if largest == estimate.data:
        key = rows_key if rows_key == columns_key else f"{rows_key}, {columns_key}"
        wide = config.runtime.precision == "float64"
        return key, "use fewer rows or features" + (", or runtime.precision=float32" if wide else "")
    hidden_key = f"model.hidden={list(model.hidden)}"
    if largest == estimate.model:
        key, hint = (
            (hidden_key, "use smaller hidden layers") if model.kind == "mlp" else (columns_key, "use fewer features")
        )
        if optimizer.name == "lbfgs" and optimizer.memory_size > 2:  # its history is most of the copies
            key += f" with optimizer.memory_size={optimizer.memory_size}"
            hint += " or a lower optimizer.memory_size (L-BFGS keeps 2 x memory_size copies of the parameters)"
        return key, hint
    hidden_hint = ", or use smaller hidden layers" if model.kind == "mlp" else ""
    if train.batch_size is None:
        if optimizer.name == "lbfgs":
            return "train.batch_size=null", f"L-BFGS runs every training row at once: use fewer rows{hidden_hint}"
        return "train.batch_size=null", (
            "a full-batch step runs every training row at once: set train.batch_size "
            f"to train on minibatches{hidden_hint}"
        )
    return f"train.batch_size={train.batch_size:,}", f"lower train.batch_size{hidden_hint}"


def _data_key(config: GradfitConfig) -> str:
    data = config.data
    return f"data.path={data.path}" if data.source == "file" else f"data.source={data.source}"


# -------------------------------------------------------------------------------------- memory available


def device_available_bytes(device: Any) -> int | None:
    """Free bytes of a JAX device: the host's for the CPU, else its allocator's limit less what is in use.

    None when the device does not say (``memory_stats()`` missing or empty): then nothing is refused.
    """
    if getattr(device, "platform", "cpu") == "cpu":
        return host_available_bytes()
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without statistics: unknown, not an error
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))


def host_available_bytes(root: str | Path = "/") -> int | None:
    """Memory this process can still allocate: the smaller of the system's and its cgroup's.

    The system's is ``MemAvailable`` of /proc/meminfo; a cgroup's (v2 or v1, the process's own and its
    ancestors') is its limit less its usage plus its reclaimable page cache. Without /proc/meminfo, the
    physical memory (``os.sysconf``): an upper bound, so that nothing that could fit is refused. Swap is not
    counted. None when nothing can be read.

    Args:
        root: the file system root to read /proc and /sys under (tests point it at a fake tree).
    """
    root = Path(root)
    known = [value for value in (_meminfo_available(root), _cgroup_available(root)) if value is not None]
    if known:
        return min(known)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _meminfo_available(root: Path) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available(root: Path) -> int | None:
    """Limit - usage + page cache of the tightest limited cgroup around this process (v2, else v1)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    v2_path = v1_path = "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif len(parts) == 3 and "memory" in parts[1].split(","):
            v1_path = parts[2]
    found = [
        value
        for value in (_cgroup_v2(root / "sys/fs/cgroup", v2_path), _cgroup_v1(root / "sys/fs/cgroup/memory", v1_path))
        if value is not None
    ]
    return min(found) if found else None


def _cgroup_v2(mount: Path, path: str) -> int | None:
    folder = _cgroup_folder(mount, path, "memory.max")
    best = None
    while folder is not None:  # a parent's limit binds its children too
        limit = _read_int(folder / "memory.max")  # "max": no limit (None)
        usage = _read_int(folder / "memory.current")
        if limit is not None and usage is not None:
            free = limit - usage + (_stat(folder / "memory.stat", "file") or 0)
            best = free if best is None else min(best, free)
        folder = folder.parent if folder != mount and mount in folder.parents else None
    return None if best is None else max(0, best)


def _cgroup_v1(mount: Path, path: str) -> int | None:
    folder = _cgroup_folder(mount, path, "memory.limit_in_bytes")
    if folder is None:
        return None
    limit = _read_int(folder / "memory.limit_in_bytes")
    hierarchical = _stat(folder / "memory.stat", "hierarchical_memory_limit")  # the ancestors' too
    limits = [value for value in (limit, hierarchical) if value is not None and value < UNLIMITED]
    usage = _read_int(folder / "memory.usage_in_bytes")
    if not limits or usage is None:
        return None
    stat = folder / "memory.stat"
    cache = (_stat(stat, "total_inactive_file") or 0) + (_stat(stat, "total_active_file") or 0)
    return max(0, min(limits) - usage + cache)


def _cgroup_folder(mount: Path, path: str, probe: str) -> Path | None:
    """The process's cgroup folder, or the mount's root (inside a container the path is the host's)."""
    for folder in (mount / path.lstrip("/"), mount):
        if (folder / probe).is_file():
            return folder
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stat(path: Path, key: str) -> int | None:
    """One ``key value`` line of a cgroup memory.stat file; None when it is missing or unreadable."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None
