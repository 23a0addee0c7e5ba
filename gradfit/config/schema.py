"""The config schema: every section, key, default, range and description, and what applies to what.

Sections are frozen pydantic models that forbid unknown keys. A key that only some variants use (``momentum``
only for momentum/nesterov) is listed in its section's APPLIES_TO, so that setting it for another variant is an
error rather than silently ignored. No jax and no file handling here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Annotated, Any, Literal, TypeGuard, cast, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from gradfit.config.choices import (
    REGRESSION_METRICS,
    Activation,
    Device,
    Init,
    Logger,
    Loss,
    Metric,
    ModelKind,
    Optimizer,
    Precision,
    Schedule,
    Shuffle,
)
from gradfit.config.data import DataConfig
from gradfit.config.section import (
    MAX_KEPT_CHECKPOINTS,
    MAX_LBFGS_MEMORY,
    MAX_STEPS,
    STEPS_WHY,
    KeyPath,
    KeyProblem,
    Section,
    Size,
    Steps,
    at_most,
    choices_of,
)


class ModelConfig(Section):
    kind: ModelKind = Field(
        "logistic",
        description="'logistic' (binary: labels mapped to -1/+1; more classes: multinomial), 'linear' (a numeric "
        "target) or 'mlp' (classes, or a numeric target with a squared or huber loss)",
    )
    loss: Loss = Field(
        "auto",
        description="auto (log for logistic and mlp, squared for linear), log (classes), squared: (1/2)(y - f)^2 or "
        "huber (squared within huber_delta of the target, linear beyond) for a numeric target",
    )
    huber_delta: float = Field(
        1.0, gt=0, description="where the huber loss turns from squared to linear, in the target's units"
    )
    hidden: list[Annotated[Size, Field(ge=1)]] = Field(
        [64, 64], min_length=1, description="hidden layer sizes, input to output"
    )
    activation: Activation = Field("relu", description="hidden-layer activation")
    init: Init = Field("auto", description="weight init: auto = He for relu/gelu/silu, Glorot for tanh/sigmoid")
    l2: float = Field(0.0, ge=0, description="L2 penalty (l2/2)*||w||^2 on weights, not biases")
    class_weight: Literal["balanced"] | dict[str | int | float, float] | None = Field(
        None,
        description="weights of the classes in the objective: balanced (n / (K * rows of the class), from the "
        "training split) or {label: weight} (other classes weigh 1), as scikit-learn's class_weight; multiplies "
        "data.weight",
    )
    l1: float = Field(
        0.0,
        ge=0,
        description="L1 penalty l1*||w||_1 on weights, not biases (elastic net with l2), applied by a proximal "
        "step (soft-thresholding) after each step of sgd, momentum, nesterov, adam or adamw",
    )

    APPLIES_TO = {"hidden": {"mlp"}, "activation": {"mlp"}, "init": {"mlp"}}
    SELECTOR = "kind"

    def unused_keys(self) -> set[str]:
        return super().unused_keys() | ({"huber_delta"} if self.resolved_loss != "huber" else set())

    @property
    def resolved_loss(self) -> str:
        """The loss ``auto`` stands for: squared for a linear model, log otherwise."""
        if self.loss == "auto":
            return "squared" if self.kind == "linear" else "log"
        return self.loss

    @property
    def regression(self) -> bool:
        """True when the model fits a numeric target (squared or huber loss), False for classes."""
        return self.resolved_loss != "log"

    @model_validator(mode="after")
    def _check(self):
        for i, size in enumerate(self.hidden):
            if size < 1:
                raise KeyProblem(("hidden", i), f"hidden layer sizes must be >= 1, got {size}")
        if self.kind == "linear" and self.loss == "log":
            raise KeyProblem(
                ("loss",), "a linear model fits a numeric target: use squared or huber (for classes: kind logistic)"
            )
        if self.kind == "logistic" and self.loss in ("squared", "huber"):
            raise KeyProblem(
                ("loss",), f"logistic regression fits classes with the log loss; for {self.loss} use kind linear"
            )
        if self.class_weight is not None and self.regression:
            raise KeyProblem(("class_weight",), "a numeric target has no classes; use data.weight for row weights")
        if isinstance(self.class_weight, dict):
            for label, weight in self.class_weight.items():
                if not (weight > 0 and math.isfinite(weight)):
                    raise KeyProblem(("class_weight", label), f"a class weight must be a number > 0, got {weight}")
        return self

    @classmethod
    def unused_in(cls, tree: dict) -> dict[str, str]:
        """huber_delta given for another loss (its default would otherwise be ignored silently)."""
        kind, loss = tree.get("kind", "logistic"), tree.get("loss", "auto")
        resolved = ("squared" if kind == "linear" else "log") if loss == "auto" else loss
        if "huber_delta" in tree and resolved != "huber" and isinstance(loss, str):
            return {"huber_delta": f"applies to loss huber, not {resolved}; remove it"}
        return {}


class ScheduleConfig(Section):
    name: Schedule = Field("constant", description="learning-rate schedule over the whole run")
    warmup_steps: Steps = Field(0, ge=0, description="linear warm-up steps from 0 to learning_rate")
    warmup_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="the warm-up as a fraction of the run's steps, instead of warmup_steps: a config that suits "
        "any table, however many steps its size makes",
    )
    final_fraction: float = Field(
        0.01, ge=0, le=1, description="learning rate at the last step, as a fraction of learning_rate"
    )

    APPLIES_TO = {
        "warmup_steps": {"warmup_cosine"},
        "warmup_fraction": {"warmup_cosine"},
        "final_fraction": {"cosine", "exponential", "warmup_cosine"},
    }
    SELECTOR = "name"

    @model_validator(mode="after")
    def _check(self):
        if self.name == "exponential" and self.final_fraction == 0:
            raise KeyProblem(("final_fraction",), "an exponential schedule needs final_fraction > 0")
        if self.warmup_fraction is not None and self.warmup_steps:
            raise KeyProblem(("warmup_fraction",), "the warm-up is warmup_steps or warmup_fraction; give one")
        return self


_ADAPTIVE = {"adam", "adamw", "rmsprop", "adagrad"}
#: the optimizers whose step an L1 proximal step can follow (gradfit.core.optim.with_l1)
PROXIMAL_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
_FIRST_ORDER = {"sgd", "momentum", "nesterov"} | _ADAPTIVE


class OptimizerConfig(Section):
    name: Optimizer = Field("adam", description="optax optimizer; lbfgs is full-batch with a zoom line search")
    learning_rate: float = Field(1e-3, gt=0, description="step size (peak value when a schedule is used)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum coefficient")
    b1: float = Field(0.9, ge=0, lt=1, description="Adam first-moment decay")
    b2: float = Field(0.999, ge=0, lt=1, description="Adam second-moment decay")
    eps: float = Field(1e-8, gt=0, description="denominator constant of adaptive methods")
    decay: float = Field(0.9, gt=0, lt=1, description="RMSProp squared-gradient decay")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay")
    memory_size: Annotated[
        int, at_most(MAX_LBFGS_MEMORY, "the history holds 2 x memory_size copies of the parameters; 3 to 20 is usual")
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


class EarlyStoppingConfig(Section):
    monitor: Metric | None = Field(
        None, description="validation metric watched at each evaluation (null: early stopping off)"
    )
    patience: int = Field(10, ge=1, description="evaluations in a row without improvement before the run stops")
    min_delta: float = Field(
        0.0, ge=0, description="smallest change of the monitored metric that counts as improvement"
    )

    APPLIES_TO = {"patience": set(get_args(Metric)), "min_delta": set(get_args(Metric))}
    SELECTOR = "monitor"


class TrainConfig(Section):
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
    keep_checkpoints: Annotated[int, at_most(MAX_KEPT_CHECKPOINTS, "each is a full copy of the training state")] = (
        Field(3, ge=1, le=MAX_KEPT_CHECKPOINTS, description="how many of the newest checkpoints to keep")
    )
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="stop when a validation metric stops improving"
    )
    loggers: list[Logger] = Field(
        ["jsonl"],
        min_length=1,
        description="metric logs to write: jsonl (metrics.jsonl, always written: the source "
        "of truth), csv (metrics.csv), tensorboard (event files for tensorboard --logdir runs; needs "
        "gradfit[tensorboard]) and mlflow (params, metrics and the run's files to MLFLOW_TRACKING_URI, else "
        "./mlruns; needs gradfit[mlflow])",
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
            raise ValueError(f"at most {MAX_STEPS:,} ({STEPS_WHY})")
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


class RuntimeConfig(Section):
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


class GradfitConfig(Section):
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
        if self.model.l1 > 0 and self.optimizer.name not in PROXIMAL_OPTIMIZERS:
            raise KeyProblem(
                ("model", "l1"),
                f"optimizer {self.optimizer.name} cannot take the L1 penalty, which is not differentiable at 0: it is "
                f"applied by a proximal step after each step of {', '.join(PROXIMAL_OPTIMIZERS)}; pick one of them",
            )
        if self.optimizer.name == "lbfgs" and self.train.batch_size is not None:
            raise KeyProblem(("train", "batch_size"), "lbfgs is a full-batch method; set train.batch_size=null")
        monitor = self.train.early_stopping.monitor
        if monitor is not None and check_metric(monitor, self.model) is not None:
            raise KeyProblem(("train", "early_stopping", "monitor"), str(check_metric(monitor, self.model)))
        if self.model.regression and self.data.source == "synthetic" and self.data.synthetic.n_classes != 2:
            raise KeyProblem(
                ("data", "synthetic", "n_classes"), "a numeric target has no classes; remove data.synthetic.n_classes"
            )
        if self.train.early_stopping.monitor and self.data.val_fraction == 0:
            raise KeyProblem(
                ("train", "early_stopping", "monitor"),
                "early stopping watches the validation split; set data.val_fraction > 0",
            )
        return self


def check_metric(metric: str, model: ModelConfig) -> str | None:
    """Why ``metric`` cannot rank or stop a run of ``model`` (accuracy of a numeric target...), or None."""
    if model.regression and metric == "val_accuracy":
        return f"val_accuracy is of classes and this model fits a numeric target (loss {model.resolved_loss}); use " + (
            ", ".join(("val_loss", *REGRESSION_METRICS))
        )
    if not model.regression and metric in REGRESSION_METRICS:
        return f"{metric} is of a numeric target and this model fits classes; use val_loss or val_accuracy"
    return None


# ---------------------------------------------------------------------------------------- schema walking


def is_section(key: KeyPath) -> bool:
    """False when the schema says ``key`` holds a value (unknown keys are left to the validator)."""
    cls: Any = GradfitConfig
    for part in key:
        if not _is_section_class(cls) or part not in cls.model_fields:
            return True
        cls = cls.model_fields[part].annotation
    return _is_section_class(cls)


def _is_section_class(cls: Any) -> TypeGuard[type[Section]]:
    return isinstance(cls, type) and issubclass(cls, Section)


def unused_key_problems(tree: Any, cls: type[Section] = GradfitConfig, prefix: KeyPath = ()) -> list:
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
        if chosen not in choices_of(selector.annotation):
            chosen = ...  # a typo in the selector itself is reported by the validator
    for key, message in cls.unused_in(tree).items():
        if tree[key] is None:
            del tree[key]
        else:
            problems.append((prefix + (key,), message))
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
            choices_of(annotation)
            if Literal in (getattr(a, "__origin__", None) for a in (annotation, *get_args(annotation)))
            else None
        )
        out.append(KeyInfo(prefix + (name,), default, field.description or "", choices))
    return out


def unused_keys(config: GradfitConfig) -> set[KeyPath]:
    """Key paths the chosen model/optimizer/schedule/source ignore (hidden from `config show`)."""
    unused: set[KeyPath] = set()

    def walk(section: Section, prefix: KeyPath):
        unused.update(prefix + (k,) for k in section.unused_keys())
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, Section) and prefix + (name,) not in unused:
                walk(value, prefix + (name,))

    walk(config, ())
    return unused
