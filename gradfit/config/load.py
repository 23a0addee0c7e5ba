"""Loading configs: YAML files, ``--set`` overrides, and error messages that point at the line.

Precedence is defaults < file < ``--set``. Everything is validated here, before any JAX work, and every
problem in a file is reported at once with its file, line and key. The validated config is frozen.
The schema itself is in ``gradfit.config.schema`` and its sections' modules (re-exported here). No jax
import: ``gradfit config ...`` stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gradfit.config.data import DataConfig, SyntheticConfig  # re-exported, as the schema below
from gradfit.config.schema import (  # re-exported: the whole config API in one place
    GradfitConfig,
    KeyInfo,
    KeyPath,
    KeyProblem,
    ModelConfig,
    OptimizerConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
    describe_keys,
    is_section,
    section_class,
    unused_key_problems,
    unused_keys,
)
from gradfit.errors import ConfigError
from gradfit.files import read_text

__all__ = [
    "ResolvedConfig",
    "resolve_config",
    "make_config",
    "parse_override",
    "to_yaml",
    "describe_keys",
    "unused_keys",
    "KeyInfo",
    "GradfitConfig",
    "DataConfig",
    "SyntheticConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RuntimeConfig",
]


# The shipped configs/logreg.yaml and configs/mlp.yaml as overrides of the defaults, so that the commands that
# need a problem without a file (bench's suite, compare-grads, trace) use the same ones (a test keeps them equal).
EXAMPLES = {
    "logreg": [
        "name=logreg",
        "data.source=breast_cancer",
        "model.kind=logistic",
        "model.l2=0.001",
        "optimizer.name=lbfgs",
        "train.steps=100",
        "train.log_every=5",
        "train.tol=1e-6",
    ],
    "mlp": [
        "name=mlp",
        "data.source=digits",
        "model.kind=mlp",
        "model.hidden=[128, 64]",
        "model.l2=0.0001",
        "optimizer.name=adam",
        "optimizer.learning_rate=0.003",
        "optimizer.schedule={name: warmup_cosine, warmup_fraction: 0.08, final_fraction: 0.01}",
        "train.epochs=40",
        "train.batch_size=64",
        "train.log_every=16",
    ],
}


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """A validated config plus where each key came from (for ``gradfit config show``)."""

    config: GradfitConfig
    path: Path | None
    file_lines: dict  # KeyPath -> line number in the file
    overridden: frozenset  # KeyPaths given with --set
    tree: Any = None  # with sweep=True: the merged input before validation (what members' values are applied to)
    sweep: Any = (
        None  # the file's raw `sweep:` section (resolve_config(..., sweep=True)), checked by gradfit.sweeps.plan
    )

    @property
    def origin(self) -> str:
        return str(self.path) if self.path is not None else "<defaults>"

    def source_of(self, key: KeyPath) -> str:
        """'--set', 'file:line' or 'default' for a key path."""
        if any(key[: len(o)] == o for o in self.overridden):
            return "--set"
        if key in self.file_lines:
            return f"{self.path}:{self.file_lines[key]}"
        return "default"


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """safe_load semantics (merge keys ``<<`` included), plus duplicate keys are an error instead of silently
    keeping the last. libyaml's parser where PyYAML has it: 7x faster, and linear in a long flow list."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # a complex key ("? [a, b]"): SafeLoader reports it below, with its line
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to convert integers of more than 4300 digits
            raise yaml.constructor.ConstructorError(
                None, None, f"integer of {len(node.value)} digits is too large", node.start_mark
            ) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _parse_yaml(text: str, origin: str) -> tuple[Any, dict]:
    """Parse YAML, returning the data and a map from key path to 1-based line number."""
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
            lines: dict = {}
            if node is not None:
                _record_lines(node, (), lines)
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{origin}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc)
        hint = ""
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        if "\t" in problem or "'\\t'" in problem or (mark and line[mark.column : mark.column + 1] == "\t"):
            hint = " (YAML does not allow tabs for indentation; use spaces)"
        elif "constructor for the tag" in problem:
            hint = " (gradfit configs hold plain values only; remove the !! tag)"
        raise ConfigError(f"{where}: invalid YAML: {problem}{hint}") from None
    return data, lines


def _record_lines(node, prefix: KeyPath, lines: dict, seen: set | None = None) -> None:
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: walking it again is exponential ("billion laughs") or endless (a loop)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _record_lines(item, prefix + (i,), lines, seen)


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
        if not isinstance(child, dict) or not is_section(key[: depth + 1]):
            section = ".".join(key[: depth + 1])
            raise ConfigError(f"--set {'.'.join(key)}: '{section}' is a value, not a section")
        node = child
    node[key[-1]] = value


def resolve_config(
    path: str | Path | Mapping | None = None, overrides: Sequence[str] = (), sweep: bool = False, memory: bool = False
) -> ResolvedConfig:
    """Load defaults < YAML file < ``--set`` overrides and validate the result.

    Args:
        path: YAML config file, a dict shaped like one (its data paths relative to the working directory), or
            None for the built-in defaults.
        overrides: ``key.path=value`` strings, applied in order.
        sweep: accept a ``sweep:`` section (``gradfit sweep``): it is set apart, unchecked, in ``.sweep``.
        memory: the rows are handed over in Python: ``data.source`` becomes memory (``data.path``,
            ``data.synthetic`` and ``data.in_memory`` go), before the data keys are checked against it.

    Raises:
        ConfigError: listing every problem, each with its file and line or its --set.
    """
    tree: dict = {}
    lines: dict = {}
    origin = "<defaults>"
    if isinstance(path, Mapping):
        tree, origin, path = copy.deepcopy(dict(path)), "<dict>", None
        _anchor_data_path(tree, Path.cwd())
    elif path is not None:
        path = Path(path)
        origin = str(path)
        text = read_text(path, "config file", ConfigError)
        data, lines = _parse_yaml(text, origin)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: a config must be a mapping of sections (name, seed, data, ...), got a {type(data).__name__}"
            )
        tree = data
        _anchor_data_path(tree, path.parent)
    section = tree.pop("sweep", None)
    if ("sweep",) in lines and not sweep:
        raise ConfigError(
            f"{origin}: line {lines[('sweep',)]}: sweep: this config describes a sweep; run "
            f"gradfit sweep {origin} (or remove the section to train its base config)"
        )
    overridden = []
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(tree, key, value)
        overridden.append(key)
        if key[0] == "data":
            _anchor_data_path(tree, Path.cwd())
    _prefer_overridden_length(tree, overridden)
    if memory:
        data = tree.setdefault("data", {}) or {}
        tree["data"] = data
        if isinstance(data, dict):
            data["source"] = "memory"
            for name in ("path", "synthetic", "in_memory"):  # a file's: rows in memory have none of them
                data.pop(name, None)
    for name in GradfitConfig.model_fields:
        if name in tree and tree[name] is None:  # `optimizer:` with every key commented out
            tree[name] = {}
    merged = copy.deepcopy(tree) if sweep else None  # validation consumes the tree; a sweep's members need it
    config = validate_tree(tree, origin, lines, dict.fromkeys(overridden, "--set"))
    return ResolvedConfig(config, path, lines, frozenset(overridden), merged, section)


def make_config(*overrides: str, path: str | Path | None = None) -> GradfitConfig:
    """A validated config from the built-in defaults (or a YAML file) plus ``--set``-style overrides.

    The short form of ``resolve_config(path, overrides).config`` for code that builds configs (tests,
    benchmarks, scripts): ``make_config("model.kind=mlp", "train.steps=50")``.

    Args:
        *overrides: ``key.path=value`` strings, applied in order after the file.
        path: a YAML config file to start from; None for the defaults.

    Returns:
        The frozen, validated config.

    Raises:
        ConfigError: listing every problem, each with its file and line or its --set.
    """
    return resolve_config(path, overrides).config


def validate_tree(tree: dict, origin: str, lines: dict, given: dict) -> GradfitConfig:
    """Validate a merged input tree, or raise one ConfigError listing every problem where it was written: the
    file's line, or ``given[key]`` (``--set``, a sweep's line) for keys set elsewhere. ``tree`` is consumed."""
    problems = unused_key_problems(tree)
    config = None
    try:
        config = GradfitConfig.model_validate(tree)
    except ValidationError as exc:
        problems += [_explain(err) for err in exc.errors()]
    if problems or config is None:
        located = sorted(
            (_locate(loc, lines, given), ".".join(map(str, loc)) or "(top level)", message) for loc, message in problems
        )
        count = f"{len(located)} problem" + ("s" if len(located) > 1 else "")
        text = "\n".join(f"  {where}{what}: {message}" for (_, where), what, message in located)
        raise ConfigError(f"{origin}: {count}:\n{text}")
    return config


# keys that say one thing two ways: a --set of one replaces the file's other (the command line wins)
ALTERNATIVES = (
    (("train",), "steps", "epochs"),
    (("optimizer", "schedule"), "warmup_steps", "warmup_fraction"),
)


def _prefer_overridden_length(tree: dict, overridden: list) -> None:
    """`--set train.steps=N` replaces the file's `epochs`, `--set optimizer.schedule.warmup_steps=N` its
    `warmup_fraction` (and vice versa): the command line wins."""
    for section, first, second in ALTERNATIVES:
        node: Any = tree
        for part in section:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for given, other in ((first, second), (second, first)):
            if (*section, given) in overridden and (*section, other) not in overridden and node.get(given) is not None:
                node.pop(other, None)


def _anchor_data_path(tree: dict, base: Path) -> None:
    """Make data.path absolute, so the resolved config (saved in the run directory) works from anywhere."""
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"] and "\0" not in data["path"]:
        p = Path(data["path"]).expanduser()
        data["path"] = str(p if p.is_absolute() else (base / p).resolve())


def _explain(err: ErrorDetails) -> tuple[KeyPath, str]:
    """A pydantic error as (key path, message with the value and a hint)."""
    loc = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyProblem):
        return loc + cause.key, str(cause)
    if err["type"] == "extra_forbidden":
        allowed = sorted(section_class(loc[:-1]).model_fields)
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
    return loc, message + ("" if isinstance(got, dict) else f" (got {_SHORT.repr(got)})")


_SHORT = reprlib.Repr()  # a value in a message: bounded, however large or deep (aliases) the input
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 200, 200


def _locate(loc: KeyPath, lines: dict, given: dict) -> tuple[int, str]:
    """(sort key, 'line N: ' or '--set: ') for a key path: a key given elsewhere wins over the file."""
    for key, where in given.items():
        if loc[: len(key)] == key or key[: len(loc)] == loc:
            return (0, f"{where}: ")
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return (lines[loc[:n]], f"line {lines[loc[:n]]}: ")
    return (0, "")


def to_yaml(config: GradfitConfig, header: str = "") -> str:
    """The resolved config as YAML that `gradfit train` accepts back unchanged.

    Every key the run uses is written, defaults included; keys the chosen variants ignore are left out
    (they would be rejected on the way back in).
    """
    return header + yaml.safe_dump(used_tree(config), sort_keys=False, default_flow_style=None)


def used_tree(config: GradfitConfig) -> dict:
    """The resolved config as a plain tree of the keys the run uses (what ``to_yaml`` writes)."""
    tree = config.model_dump(mode="json")
    for key in sorted(unused_keys(config), key=len, reverse=True):
        node = tree
        for part in key[:-1]:
            node = node.get(part, {})
        node.pop(key[-1], None)
    return tree


def replaced(config: GradfitConfig, section: str, origin: str, **changes: Any) -> GradfitConfig:
    """``config`` with keys of one section changed (a value of None removes the key: its default applies),
    validated again; a problem is a ConfigError that names ``origin``."""
    tree = used_tree(config)
    part = tree.setdefault(section, {})
    for key, value in changes.items():
        if value is None:
            part.pop(key, None)
        else:
            part[key] = value
    return validate_tree(tree, origin, {}, {})
