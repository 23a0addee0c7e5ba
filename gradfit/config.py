"""The config schema, YAML loading and ``--set`` overrides.

Precedence is defaults < file < ``--set``. Everything is validated here, before any JAX work, and every
problem in a file is reported at once with its file, line and key. The validated config is frozen.
No jax import in this module: ``gradfit config ...`` and ``--help`` stay fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Sequence, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradfit.errors import ConfigError

KeyPath = tuple  # ("optimizer", "learning_rate"); list indexes are ints


class _KeyProblem(ValueError):
    """Raised by a validator to blame one key of its section rather than the section as a whole."""

    def __init__(self, key: KeyPath, message: str):
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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
        # pydantic would read `epochs: yes` as 1; a boolean where a number belongs is a mistake
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("expected a number, not a boolean")
        return value


class SyntheticConfig(_Section):
    n_samples: int = Field(10_000, ge=2, description="number of rows generated")
    n_features: int = Field(20, ge=1, description="number of features")
    n_classes: int = Field(2, ge=2, description="number of classes")
    separation: float = Field(
        2.0, ge=0, description="scale of the true weights: larger means easier to classify"
    )
    noise: float = Field(
        1.0, ge=0, description="label noise: 1 samples labels from the logistic model, 0 makes them deterministic"
    )


class DataConfig(_Section):
    source: Literal["breast_cancer", "digits", "synthetic", "file"] = Field(
        "breast_cancer", description="built-in dataset, 'synthetic', or 'file' (then set data.path)"
    )
    path: Optional[str] = Field(
        None, description="CSV (with a header) or .npz (arrays X, y) file; relative to the config file"
    )
    target: str = Field("target", description="name of the label column in a CSV file")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of rows held out for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of rows held out for the final test")
    standardize: bool = Field(
        True, description="scale features to mean 0, std 1 using training-split statistics"
    )
    synthetic: SyntheticConfig = Field(
        default_factory=SyntheticConfig, description="generator settings (source: synthetic)"
    )

    APPLIES_TO = {"path": {"file"}, "target": {"file"}, "synthetic": {"synthetic"}}
    SELECTOR = "source"

    @model_validator(mode="after")
    def _check(self):
        if self.source == "file" and not self.path:
            raise _KeyProblem(("path",), "data.source is 'file' but data.path is not set")
        if self.val_fraction + self.test_fraction >= 1:
            raise _KeyProblem(
                ("val_fraction",),
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves no "
                "training rows; keep the sum below 1",
            )
        return self


class ModelConfig(_Section):
    kind: Literal["logistic", "mlp"] = Field(
        "logistic", description="'logistic' (binary, labels mapped to -1/+1) or 'mlp' (binary or multiclass)"
    )
    hidden: list[Annotated[int, Field(ge=1)]] = Field([64, 64], min_length=1, description="hidden layer sizes, input to output")
    activation: Literal["relu", "tanh", "gelu", "sigmoid", "silu"] = Field(
        "relu", description="hidden-layer activation"
    )
    init: Literal["auto", "he", "glorot"] = Field(
        "auto", description="weight init: auto = He for relu/gelu/silu, Glorot for tanh/sigmoid"
    )
    l2: float = Field(0.0, ge=0, description="L2 penalty (l2/2)*||w||^2 on weights, not biases")

    APPLIES_TO = {"hidden": {"mlp"}, "activation": {"mlp"}, "init": {"mlp"}}
    SELECTOR = "kind"

    @model_validator(mode="after")
    def _check(self):
        for i, size in enumerate(self.hidden):
            if size < 1:
                raise _KeyProblem(("hidden", i), f"hidden layer sizes must be >= 1, got {size}")
        return self


class ScheduleConfig(_Section):
    name: Literal["constant", "cosine", "exponential", "warmup_cosine"] = Field(
        "constant", description="learning-rate schedule over the whole run"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps from 0 to learning_rate")
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
            raise _KeyProblem(("final_fraction",), "an exponential schedule needs final_fraction > 0")
        return self


_ADAPTIVE = {"adam", "adamw", "rmsprop", "adagrad"}
_FIRST_ORDER = {"sgd", "momentum", "nesterov"} | _ADAPTIVE


class OptimizerConfig(_Section):
    name: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"] = Field(
        "adam", description="optax optimizer; lbfgs is full-batch with a zoom line search"
    )
    learning_rate: float = Field(1e-3, gt=0, description="step size (peak value when a schedule is used)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum coefficient")
    b1: float = Field(0.9, ge=0, lt=1, description="Adam first-moment decay")
    b2: float = Field(0.999, ge=0, lt=1, description="Adam second-moment decay")
    eps: float = Field(1e-8, gt=0, description="denominator constant of adaptive methods")
    decay: float = Field(0.9, gt=0, lt=1, description="RMSProp squared-gradient decay")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay")
    memory_size: int = Field(10, ge=1, description="L-BFGS history length")
    clip_norm: Optional[float] = Field(None, gt=0, description="clip gradients to this global norm (null: off)")
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


class TrainConfig(_Section):
    epochs: Optional[int] = Field(None, ge=1, description="passes over the training split (100 if steps is unset)")
    steps: Optional[int] = Field(None, ge=1, description="optimizer steps; use instead of epochs")
    batch_size: Optional[int] = Field(
        None, ge=1, description="minibatch size (null: full batch); the last partial batch of an epoch is dropped"
    )
    log_every: int = Field(10, ge=1, description="steps fused per device dispatch; metrics are logged after each")
    tol: Optional[float] = Field(
        None, gt=0, description="stop when the full-batch gradient norm falls below this (checked when logging)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_epochs(cls, data: Any):
        if isinstance(data, dict) and data.get("epochs") is None and data.get("steps") is None:
            return {**data, "epochs": 100}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.epochs is not None and self.steps is not None:
            raise _KeyProblem(
                ("steps",), "set either train.epochs or train.steps, not both (set train.epochs=null to use steps)"
            )
        return self


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto picks the GPU when JAX sees one")
    precision: Literal["float32", "float64"] = Field("float32", description="floating-point type of data and params")


class GradfitConfig(_Section):
    """A whole training config. Every key has a default; see ``describe_keys`` and the README."""

    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
        description="run name; the run directory is <out-dir>/<name>-<timestamp>",
    )
    seed: int = Field(0, ge=0, description="seed for the split, the init and the minibatch order")
    data: DataConfig = Field(default_factory=DataConfig, description="dataset and split")
    model: ModelConfig = Field(default_factory=ModelConfig, description="model and loss")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="optax optimizer")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training loop")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="device and precision")

    @model_validator(mode="after")
    def _check_combination(self):
        if self.optimizer.name == "lbfgs" and self.train.batch_size is not None:
            raise _KeyProblem(("train", "batch_size"), "lbfgs is a full-batch method; set train.batch_size=null")
        return self


# --------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """A validated config plus where each key came from (for ``gradfit config show``)."""

    config: GradfitConfig
    path: Optional[Path]
    file_lines: dict  # KeyPath -> line number in the file
    overridden: frozenset  # KeyPaths given with --set

    def source_of(self, key: KeyPath) -> str:
        """'--set', 'file:line' or 'default' for a key path."""
        if any(key[: len(o)] == o for o in self.overridden):
            return "--set"
        if key in self.file_lines:
            return f"{self.path}:{self.file_lines[key]}"
        return "default"


class _StrictLoader(yaml.SafeLoader):
    """safe_load semantics, plus duplicate keys are an error instead of silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, origin: str) -> tuple[Any, dict]:
    """Parse YAML, returning the data and a map from key path to 1-based line number."""
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc)
        hint = ""
        if "\t" in problem or "'\\t'" in problem:
            hint = " (YAML does not allow tabs for indentation; use spaces)"
        elif "constructor for the tag" in problem:
            hint = " (gradfit configs hold plain values only; remove the !! tag)"
        raise ConfigError(f"{where}: invalid YAML: {problem}{hint}") from None
    lines: dict = {}
    if node is not None:
        _record_lines(node, (), lines)
    return data, lines


def _record_lines(node, prefix: KeyPath, lines: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _record_lines(item, prefix + (i,), lines)


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """Parse one ``--set key.path=value``; the value is YAML (``[256, 256]``, ``null``, ``3e-3``)."""
    key, sep, raw = text.partition("=")
    parts = tuple(key.strip().split("."))
    if not sep or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set optimizer.learning_rate=3e-3")
    value, _ = _parse_yaml(raw, f"--set {key}")
    return parts, value


def _apply_override(tree: dict, key: KeyPath, value: Any) -> None:
    node = tree
    for depth, part in enumerate(key[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict) or not _is_section(key[: depth + 1]):
            section = ".".join(key[: depth + 1])
            raise ConfigError(f"--set {'.'.join(key)}: '{section}' is a value, not a section")
        node = child
    node[key[-1]] = value


def _is_section(key: KeyPath) -> bool:
    """False when the schema says ``key`` holds a value (unknown keys are left to the validator)."""
    cls: Any = GradfitConfig
    for part in key:
        if not _is_section_class(cls) or part not in cls.model_fields:
            return True
        cls = cls.model_fields[part].annotation
    return _is_section_class(cls)


def _is_section_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, _Section)


def _unused_key_problems(tree: Any, cls: type[_Section] = GradfitConfig, prefix: KeyPath = ()) -> list:
    """(key path, message) for each key the section's chosen variant ignores, checked on the raw input.

    Done before and apart from pydantic so these are reported together with every other problem.
    """
    if not isinstance(tree, dict):
        return []
    problems = []
    chosen = None
    if cls.SELECTOR:
        selector = cls.model_fields[cls.SELECTOR]
        chosen = tree.get(cls.SELECTOR, selector.default)
        if chosen not in get_args(selector.annotation):
            chosen = None  # a typo in the selector itself is reported by the validator
    for key, value in tree.items():
        users = cls.APPLIES_TO.get(key)
        if users is not None and chosen is not None and chosen not in users:
            problems.append((prefix + (key,), f"not used when {cls.SELECTOR} is '{chosen}' (it applies to: "
                                              f"{', '.join(sorted(users))}); remove it"))
        elif key in cls.model_fields and _is_section_class(cls.model_fields[key].annotation):
            problems += _unused_key_problems(value, cls.model_fields[key].annotation, prefix + (key,))
    return problems


def resolve_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> ResolvedConfig:
    """Load defaults < YAML file < ``--set`` overrides and validate the result.

    Args:
        path: YAML config file, or None for the built-in defaults.
        overrides: ``key.path=value`` strings, applied in order.

    Raises:
        ConfigError: listing every problem, each with its file and line or its --set.
    """
    tree: dict = {}
    lines: dict = {}
    origin = "<defaults>"
    if path is not None:
        path = Path(path)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc}") from None
        data, lines = _parse_yaml(text, origin)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections (name, seed, data, ...), "
                              f"got a {type(data).__name__}")
        tree = data
        _anchor_data_path(tree, path.parent)
    overridden = []
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(tree, key, value)
        overridden.append(key)
        if key[0] == "data":
            _anchor_data_path(tree, Path.cwd())
    for section in GradfitConfig.model_fields:
        if section in tree and tree[section] is None:  # `optimizer:` with every key commented out
            tree[section] = {}
    problems = _unused_key_problems(tree)
    config = None
    try:
        config = GradfitConfig.model_validate(tree)
    except ValidationError as exc:
        problems += [_explain(err) for err in exc.errors()]
    if problems:
        located = sorted((_locate(loc, lines, overridden), ".".join(map(str, loc)) or "(top level)", message)
                         for loc, message in problems)
        count = f"{len(located)} problem" + ("s" if len(located) > 1 else "")
        text = "\n".join(f"  {where}{what}: {message}" for (_, where), what, message in located)
        raise ConfigError(f"{origin}: {count}:\n{text}")
    return ResolvedConfig(config, path, lines, frozenset(overridden))


def _anchor_data_path(tree: dict, base: Path) -> None:
    """Make data.path absolute, so the resolved config (saved in the run directory) works from anywhere."""
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        p = Path(data["path"]).expanduser()
        data["path"] = str(p if p.is_absolute() else (base / p).resolve())


def _explain(err: dict) -> tuple[KeyPath, str]:
    """A pydantic error as (key path, message with the value and a hint)."""
    loc = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, _KeyProblem):
        return loc + cause.key, str(cause)
    if err["type"] == "extra_forbidden":
        allowed = sorted(_section_class(loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
        return loc, f"unknown key; {hint}"
    if err["type"] == "literal_error":
        choices = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        close = difflib.get_close_matches(str(err["input"]), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return loc, f"got {err['input']!r}; expected one of {', '.join(choices)}{hint}"
    message = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    return loc, message + ("" if isinstance(got, dict) else f" (got {got!r})")


def _locate(loc: KeyPath, lines: dict, overridden: list) -> tuple[int, str]:
    """(sort key, 'line N: ' or '--set: ') for a key path: an override wins over the file."""
    for key in overridden:
        if loc[: len(key)] == key or key[: len(loc)] == loc:
            return (0, "--set: ")
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return (lines[loc[:n]], f"line {lines[loc[:n]]}: ")
    return (0, "")


def _section_class(loc: KeyPath) -> type[BaseModel]:
    cls: type[BaseModel] = GradfitConfig
    for part in loc:
        annotation = cls.model_fields[part].annotation
        cls = annotation
    return cls


# ----------------------------------------------------------------------------------------- introspection


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    key: KeyPath
    default: Any
    description: str
    choices: Optional[tuple] = None


def describe_keys(cls: type[BaseModel] = GradfitConfig, prefix: KeyPath = ()) -> list[KeyInfo]:
    """Every leaf key of the schema with its default and description (drives `config show` and the README)."""
    out = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(describe_keys(annotation, prefix + (name,)))
            continue
        default = field.get_default(call_default_factory=True)
        choices = getattr(annotation, "__args__", None) if getattr(annotation, "__origin__", None) is Literal else None
        out.append(KeyInfo(prefix + (name,), default, field.description or "", choices))
    return out


def unused_keys(config: GradfitConfig) -> set[KeyPath]:
    """Key paths the chosen model/optimizer/schedule/source ignore (hidden from `config show`)."""
    unused = set()

    def walk(section: _Section, prefix: KeyPath):
        unused.update(prefix + (k,) for k in section.unused_keys())
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, _Section) and prefix + (name,) not in unused:
                walk(value, prefix + (name,))

    walk(config, ())
    return unused


def to_yaml(config: GradfitConfig, header: str = "") -> str:
    """The resolved config as YAML that `gradfit train` accepts back unchanged.

    Every key the run uses is written, defaults included; keys the chosen variants ignore are left out
    (they would be rejected on the way back in).
    """
    tree = config.model_dump(mode="json")
    for key in sorted(unused_keys(config), key=len, reverse=True):
        node = tree
        for part in key[:-1]:
            node = node.get(part, {})
        node.pop(key[-1], None)
    return header + yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)
