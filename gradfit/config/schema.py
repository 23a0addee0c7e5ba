"""The config schema: every section, key, default, range and description, and what applies to what.

Sections are frozen pydantic models that forbid unknown keys. A key that only some variants use (``momentum``
only for momentum/nesterov) is listed in its section's APPLIES_TO, so that setting it for another variant is an
error rather than silently ignored. No jax and no file handling here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, ClassVar, Literal, TypeGuard, cast, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gradfit.config.choices import (
    Activation,
    Device,
    Init,
    Logger,
    Metric,
    Missing,
    ModelKind,
    Optimizer,
    Precision,
    ReferenceCategory,
    Schedule,
    Shuffle,
    Source,
    UnknownCategory,
)

KeyPath = tuple  # ("optimizer", "learning_rate"); list indexes are ints

# Upper bounds of counts and sizes: past them a run would fail (or wrap around) on the device, after the run
# directory exists, rather than at validation. JAX's integers are int32: the compiled loop's step counter, row
# indexes of minibatches and evaluation blocks, correct-prediction counts.
INT32_MAX = 2**31 - 1
MAX_SIZE = INT32_MAX  # rows, features, classes, hidden units, batch rows
MAX_STEPS = 2**30  # steps, epochs and every schedule in steps: the last log window (< log_every more) still fits int32
MAX_KEPT_CHECKPOINTS = 1000
MAX_LBFGS_MEMORY = 1000
_SIZE_WHY = "2**31 - 1: rows and sizes are int32 on the device"
_STEPS_WHY = "2**30: the compiled training loop counts steps in int32"


def _at_most(limit: int, why: str) -> BeforeValidator:
    """A bound checked before pydantic's own ``le``, so that the message gives the limit with its reason."""

    def check(value: Any) -> Any:
        number = value
        if type(value) is str:  # YAML 1.1 reads `1e10` as text, not as a number
            try:
                number = float(value)
            except ValueError:
                return value
        if type(number) in (int, float) and number > limit:
            raise ValueError(f"at most {limit:,} ({why})")
        if type(value) is str and number.is_integer():
            return int(number)  # `steps: 1e4` is 10,000 steps, as `1.0e+4` already is
        return value

    return BeforeValidator(check)


Size = Annotated[int, _at_most(MAX_SIZE, _SIZE_WHY), Field(le=MAX_SIZE)]
Steps = Annotated[int, _at_most(MAX_STEPS, _STEPS_WHY), Field(le=MAX_STEPS)]


class KeyProblem(ValueError):
    """Raised by a validator to blame one key of its section rather than the section as a whole."""

    def __init__(self, key: KeyPath, message: str):
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: key -> the selector values it is used with, e.g. {"momentum": {"momentum", "nesterov"}}
    APPLIES_TO: ClassVar[dict[str, set[str]]] = {}
    SELECTOR: ClassVar[str] = ""

    def unused_keys(self) -> set[str]:
        """Keys of this section that the chosen variant (e.g. the optimizer name) ignores."""
        chosen = getattr(self, self.SELECTOR, None)
        return {key for key, users in self.APPLIES_TO.items() if chosen not in users}

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info):
        # pydantic would read `epochs: yes` as 1; a boolean where a number or a word belongs is a mistake
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            choices = _choices(annotation)
            wanted = f"one of {', '.join(map(repr, choices))}" if choices else "a number"
            raise ValueError(
                f"expected {wanted}, not a boolean (YAML reads yes/no/on/off as true/false; quote the "
                "word if you meant it)"
            )
        return value


class SyntheticConfig(_Section):
    n_samples: Size = Field(10_000, ge=2, description="number of rows generated")
    n_features: Size = Field(20, ge=1, description="number of features")
    n_classes: Size = Field(2, ge=2, description="number of classes")
    separation: float = Field(2.0, ge=0, description="scale of the true weights: larger means easier to classify")
    noise: float = Field(
        1.0, ge=0, description="label noise: 1 samples labels from the logistic model, 0 makes them deterministic"
    )


class DataConfig(_Section):
    source: Source = Field("breast_cancer", description="built-in dataset, 'synthetic', or 'file' (then set data.path)")
    path: str | None = Field(
        None,
        description="CSV (with a header), Parquet (.parquet), Arrow IPC / Feather (.arrow, .feather), .npz (arrays X, "
        "y) or a folder made by 'gradfit data convert'; relative to the config file",
    )
    target: str = Field("target", description="name of the label column in a CSV, Parquet or Feather file")
    features: list[str] | None = Field(
        None, description="the feature columns, in order (null: every column but the target and data.drop)"
    )
    drop: list[str] = Field([], description="columns to ignore, such as ids")
    categorical: Literal["auto"] | list[str] = Field(
        [],
        description="columns one-hot encoded with the training split's categories; auto: every column whose "
        "cells are not numbers",
    )
    max_categories: Size = Field(
        100, ge=2, description="refuse a categorical column with more categories in the training split (an id?)"
    )
    unknown_category: UnknownCategory = Field(
        "error", description="a category the training split did not hold: an error, or encoded as all zeros"
    )
    reference_category: ReferenceCategory = Field(
        "none",
        description="first: no column for each categorical column's first category, so that its coefficients "
        "are relative to it (what a coefficient table without an L2 penalty needs)",
    )
    missing: Missing = Field(
        "error",
        description="missing cells (empty or NA): an error, or filled with the training split's mean, median or "
        "most frequent value (categorical columns: the most frequent category)",
    )
    missing_indicator: bool = Field(
        False, description="add a 0/1 feature missing(COLUMN) for each column with missing training cells"
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of rows held out for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of rows held out for the final test")
    standardize: bool = Field(
        True, description="scale numeric features to mean 0, std 1 with training-split statistics (0/1 encodings stay)"
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="seed of the split and of synthetic rows (null: the top-level seed); "
        "a sweep over seeds sets it, so that every member sees the same split",
    )
    synthetic: SyntheticConfig = Field(
        default_factory=SyntheticConfig, description="generator settings (source: synthetic)"
    )
    in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="hold the data in memory (true), stream row blocks from disk (false: a folder made by "
        "'gradfit data convert', or synthetic), or stream when the training split would fill over half the device "
        "memory or a quarter of host RAM (auto)",
    )

    APPLIES_TO = {
        "path": {"file"},
        "target": {"file"},
        "synthetic": {"synthetic"},
        **{key: {"file", "breast_cancer", "digits"} for key in ("features", "drop", "categorical")},
    }
    SELECTOR = "source"

    @field_validator("in_memory", mode="plain")
    @classmethod
    def _auto_or_boolean(cls, value: Any):
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError("expected auto, true or false")

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: str | None):
        if value is not None and "\0" in value:
            raise ValueError("a file path cannot contain a NUL character")
        return value

    @field_validator("features", "drop")
    @classmethod
    def _distinct(cls, value: list[str] | None):
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"names a column twice: {sorted(n for n in set(value) if value.count(n) > 1)}")
        if value is not None and any(not name.strip() for name in value):
            raise ValueError("a column name cannot be empty")
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.features is not None and not self.features:
            raise KeyProblem(("features",), "names no column; list the feature columns, or null for all")
        both = set(self.features or ()) & set(self.drop)
        if both:
            raise KeyProblem(("drop",), f"{sorted(both)} also in data.features; a column is a feature or dropped")
        if isinstance(self.categorical, list) and self.features is not None:
            outside = [n for n in self.categorical if n not in self.features]
            if outside:
                raise KeyProblem(("categorical",), f"{outside} not in data.features; categorical columns are features")
        if self.source == "file" and not self.path:
            raise KeyProblem(("path",), "data.source is 'file' but data.path is not set")
        if self.val_fraction + self.test_fraction >= 1:
            raise KeyProblem(
                ("val_fraction",),
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves no "
                "training rows; keep the sum below 1",
            )
        return self


class ModelConfig(_Section):
    kind: ModelKind = Field(
        "logistic", description="'logistic' (binary, labels mapped to -1/+1) or 'mlp' (binary or multiclass)"
    )
    hidden: list[Annotated[Size, Field(ge=1)]] = Field(
        [64, 64], min_length=1, description="hidden layer sizes, input to output"
    )
    activation: Activation = Field("relu", description="hidden-layer activation")
    init: Init = Field("auto", description="weight init: auto = He for relu/gelu/silu, Glorot for tanh/sigmoid")
    l2: float = Field(0.0, ge=0, description="L2 penalty (l2/2)*||w||^2 on weights, not biases")

    APPLIES_TO = {"hidden": {"mlp"}, "activation": {"mlp"}, "init": {"mlp"}}
    SELECTOR = "kind"

    @model_validator(mode="after")
    def _check(self):
        for i, size in enumerate(self.hidden):
            if size < 1:
                raise KeyProblem(("hidden", i), f"hidden layer sizes must be >= 1, got {size}")
        return self


class ScheduleConfig(_Section):
    name: Schedule = Field("constant", description="learning-rate schedule over the whole run")
    warmup_steps: Steps = Field(0, ge=0, description="linear warm-up steps from 0 to learning_rate")
    final_fraction: float = Field(
        0.01, ge=0, le=1, description="learning rate at the last step, as a fraction of learning_rate"
    )

    APPLIES_TO = {
        "warmup_steps": {"warmup_cosine"},
        "final_fraction": {"cosine", "exponential", "warmup_cosine"},
    }
    SELECTOR = "name"

    @model_validator(mode="after")
    def _check(self):
        if self.name == "exponential" and self.final_fraction == 0:
            raise KeyProblem(("final_fraction",), "an exponential schedule needs final_fraction > 0")
        return self


_ADAPTIVE = {"adam", "adamw", "rmsprop", "adagrad"}
_FIRST_ORDER = {"sgd", "momentum", "nesterov"} | _ADAPTIVE


class OptimizerConfig(_Section):
    name: Optimizer = Field("adam", description="optax optimizer; lbfgs is full-batch with a zoom line search")
    learning_rate: float = Field(1e-3, gt=0, description="step size (peak value when a schedule is used)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum coefficient")
    b1: float = Field(0.9, ge=0, lt=1, description="Adam first-moment decay")
    b2: float = Field(0.999, ge=0, lt=1, description="Adam second-moment decay")
    eps: float = Field(1e-8, gt=0, description="denominator constant of adaptive methods")
    decay: float = Field(0.9, gt=0, lt=1, description="RMSProp squared-gradient decay")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay")
    memory_size: Annotated[
        int, _at_most(MAX_LBFGS_MEMORY, "the history holds 2 x memory_size copies of the parameters; 3 to 20 is usual")
    ] = Field(10, ge=1, le=MAX_LBFGS_MEMORY, description="L-BFGS history length")
    clip_norm: float | None = Field(None, gt=0, description="clip gradients to this global norm (null: off)")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="learning-rate schedule")

    APPLIES_TO = {
        "learning_rate": _FIRST_ORDER,
        "momentum": {"momentum", "nesterov"},
        "b1": {"adam", "adamw"},
        "b2": {"adam", "adamw"},
        "eps": _ADAPTIVE,
        "decay": {"rmsprop"},
        "weight_decay": {"adamw"},
        "memory_size": {"lbfgs"},
        "clip_norm": _FIRST_ORDER,
        "schedule": _FIRST_ORDER,
    }
    SELECTOR = "name"


class EarlyStoppingConfig(_Section):
    monitor: Metric | None = Field(
        None, description="validation metric watched at each evaluation (null: early stopping off)"
    )
    patience: int = Field(10, ge=1, description="evaluations in a row without improvement before the run stops")
    min_delta: float = Field(
        0.0, ge=0, description="smallest change of the monitored metric that counts as improvement"
    )

    APPLIES_TO = {"patience": {"val_loss", "val_accuracy"}, "min_delta": {"val_loss", "val_accuracy"}}
    SELECTOR = "monitor"


class TrainConfig(_Section):
    epochs: Steps | None = Field(None, ge=1, description="passes over the training split (100 if steps is unset)")
    steps: Steps | None = Field(None, ge=1, description="optimizer steps; use instead of epochs")
    batch_size: Size | None = Field(
        None, ge=1, description="minibatch size (null: full batch); the last partial batch of an epoch is dropped"
    )
    log_every: Steps = Field(
        10,
        ge=1,
        description="steps between log points, which record running means of the minibatch objective and "
        "gradient norm (almost free: the steps computed them)",
    )
    eval_every: int | str = Field(
        "auto",
        description="steps between evaluations of the whole training and validation splits (also at the "
        "end); auto keeps them at or below 5% of the training work",
    )
    tol: float | None = Field(
        None,
        gt=0,
        description="stop when the gradient norm over the whole training split falls below this "
        "(full batch: checked after every step; minibatches: at evaluations)",
    )
    checkpoint_every: Steps | None = Field(
        1000,
        ge=1,
        description="checkpoint at the first log point past every this many steps (null: only at the "
        "end and on interruption)",
    )
    keep_checkpoints: Annotated[int, _at_most(MAX_KEPT_CHECKPOINTS, "each is a full copy of the training state")] = (
        Field(3, ge=1, le=MAX_KEPT_CHECKPOINTS, description="how many of the newest checkpoints to keep")
    )
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="stop when a validation metric stops improving"
    )
    loggers: list[Logger] = Field(
        ["jsonl"],
        min_length=1,
        description="metric logs to write: jsonl (metrics.jsonl, always written: the source "
        "of truth), csv (metrics.csv) and tensorboard (event files for tensorboard --logdir runs; needs "
        "gradfit[tensorboard])",
    )
    shuffle: Shuffle = Field(
        "auto",
        description="minibatch order each epoch: full (a permutation of all rows), blocks (a permutation of "
        "4,096-row blocks, rows shuffled within windows of 16 blocks: reads a disk in long runs), or auto (full in "
        "memory, blocks when streaming)",
    )

    @field_validator("eval_every", mode="plain")
    @classmethod
    def _auto_or_steps(cls, value: Any):
        if value == "auto" or (type(value) is int and 1 <= value <= MAX_STEPS):
            return value
        if type(value) is int and value > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS:,} ({_STEPS_WHY})")
        raise ValueError("expected 'auto' or a whole number of steps >= 1")

    @model_validator(mode="before")
    @classmethod
    def _default_epochs(cls, data: Any):
        if isinstance(data, dict) and data.get("epochs") is None and data.get("steps") is None:
            return {**data, "epochs": 100}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.epochs is not None and self.steps is not None:
            raise KeyProblem(
                ("steps",), "set either train.epochs or train.steps, not both (set train.epochs=null to use steps)"
            )
        return self


MAX_DEVICES = 65536


class RuntimeConfig(_Section):
    device: Device = Field("auto", description="auto picks the GPU when JAX sees one")
    devices: str | int | list[int] = Field(
        "auto",
        description="devices of that platform to train on: auto (every local one), N (the first N) or a "
        "list of device ids; the minibatch is split across them (data parallel, parameters replicated)",
    )
    precision: Precision = Field(
        "float32",
        description="float32 or float64 for data and params; bfloat16: float32 params with bfloat16 "
        "matrix-product inputs (mixed precision, for accelerators)",
    )

    @field_validator("devices", mode="plain")
    @classmethod
    def _auto_count_or_ids(cls, value: Any):
        if value == "auto" or (type(value) is int and 1 <= value <= MAX_DEVICES):
            return value
        if isinstance(value, (list, tuple)) and value and all(type(i) is int and 0 <= i < 2**31 for i in value):
            if len(set(value)) < len(value):
                raise ValueError(f"device ids repeat in {list(value)}; list each device once")
            return list(value)
        raise ValueError("expected 'auto', a device count >= 1 or a non-empty list of device ids like [0, 1]")


def data_seed(config: GradfitConfig) -> int:
    """The seed of the split and of synthetic rows."""
    return config.seed if config.data.seed is None else config.data.seed


class GradfitConfig(_Section):
    """A whole training config. Every key has a default; see ``describe_keys`` and the config reference in the docs."""

    name: str = Field(
        "run",
        max_length=100,
        description="run name; the run directory is <out-dir>/<name>-<timestamp>",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for the split, the init and the minibatch order")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset and split")
    model: ModelConfig = Field(default_factory=ModelConfig, description="model and loss")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="optax optimizer")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training loop")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="device and precision")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, value: str):
        # it becomes a folder name: no separators, no "..", nothing hidden
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                "use letters, digits, '.', '_' and '-', starting with a letter or digit "
                "(the name becomes a folder under --out-dir)"
            )
        return value

    @model_validator(mode="after")
    def _check_combination(self):
        if self.optimizer.name == "lbfgs" and self.train.batch_size is not None:
            raise KeyProblem(("train", "batch_size"), "lbfgs is a full-batch method; set train.batch_size=null")
        if self.train.early_stopping.monitor and self.data.val_fraction == 0:
            raise KeyProblem(
                ("train", "early_stopping", "monitor"),
                "early stopping watches the validation split; set data.val_fraction > 0",
            )
        return self


# ---------------------------------------------------------------------------------------- schema walking


def is_section(key: KeyPath) -> bool:
    """False when the schema says ``key`` holds a value (unknown keys are left to the validator)."""
    cls: Any = GradfitConfig
    for part in key:
        if not _is_section_class(cls) or part not in cls.model_fields:
            return True
        cls = cls.model_fields[part].annotation
    return _is_section_class(cls)


def _is_section_class(cls: Any) -> TypeGuard[type[_Section]]:
    return isinstance(cls, type) and issubclass(cls, _Section)


def unused_key_problems(tree: Any, cls: type[_Section] = GradfitConfig, prefix: KeyPath = ()) -> list:
    """(key path, message) for each key the section's chosen variant ignores, checked on the raw input.

    Done before and apart from pydantic so these are reported together with every other problem. Such keys
    set to null are removed from ``tree`` instead (null means "not set").
    """
    if not isinstance(tree, dict):
        return []
    problems = []
    chosen = None
    if cls.SELECTOR:
        selector = cls.model_fields[cls.SELECTOR]
        chosen = tree.get(cls.SELECTOR, selector.default)
        if chosen not in _choices(selector.annotation):
            chosen = ...  # a typo in the selector itself is reported by the validator
    for key, value in list(tree.items()):
        users = cls.APPLIES_TO.get(key)
        if users is not None and chosen is not ... and chosen not in users:
            if value is None:  # `--set optimizer.momentum=null` clears a key that no longer applies
                del tree[key]
                continue
            shown = "null" if chosen is None else f"'{chosen}'"
            problems.append(
                (
                    prefix + (key,),
                    f"not used when {cls.SELECTOR} is {shown} (it applies to: {', '.join(sorted(users))}); remove it",
                )
            )
        elif key in cls.model_fields and _is_section_class(section := cls.model_fields[key].annotation):
            problems += unused_key_problems(value, section, prefix + (key,))
    return problems


def _choices(annotation: Any) -> tuple:
    """The values a Literal (or Optional[Literal]) annotation allows."""
    args = get_args(annotation)
    if type(None) in args:  # Optional[Literal[...]]
        return tuple(v for arg in args if arg is not type(None) for v in get_args(arg)) + (None,)
    return args


def section_class(loc: KeyPath) -> type[BaseModel]:
    cls: type[BaseModel] = GradfitConfig
    for part in loc:
        cls = cast(type[BaseModel], cls.model_fields[part].annotation)
    return cls


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    key: KeyPath
    default: Any
    description: str
    choices: tuple | None = None


def describe_keys(cls: type[BaseModel] = GradfitConfig, prefix: KeyPath = ()) -> list[KeyInfo]:
    """Every leaf key of the schema with its default and description (drives `config show` and the config reference)."""
    out = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(describe_keys(annotation, prefix + (name,)))
            continue
        default = field.get_default(call_default_factory=True)
        choices = (
            _choices(annotation)
            if Literal in (getattr(a, "__origin__", None) for a in (annotation, *get_args(annotation)))
            else None
        )
        out.append(KeyInfo(prefix + (name,), default, field.description or "", choices))
    return out


def unused_keys(config: GradfitConfig) -> set[KeyPath]:
    """Key paths the chosen model/optimizer/schedule/source ignore (hidden from `config show`)."""
    unused: set[KeyPath] = set()

    def walk(section: _Section, prefix: KeyPath):
        unused.update(prefix + (k,) for k in section.unused_keys())
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, _Section) and prefix + (name,) not in unused:
                walk(value, prefix + (name,))

    walk(config, ())
    return unused
