"""What a sweep trains: the ``sweep:`` section (or ``--grid``, ``--random``, ``--seeds``), checked like every other
section, and its members, each a whole validated config. No jax here (``gradfit.sweeps.run`` trains them).

Members are the grid's settings (times the random draws) times the seeds. A key is swept in one of three ways:

- a *value* (learning rate, l2, momentum, ...): a traced number, so members that differ only in values share
  one compiled program and run side by side under ``jax.vmap``;
- a *program* key (hidden sizes, activation, optimizer, batch size, precision, ...): members that differ in one
  form separate groups, one compile each;
- a *host* key (early-stopping patience): read by the loop on the host only.

Everything else (the data, the device, the log and checkpoint schedule) is shared by all members and cannot be
swept: each sub-run is a normal run, and members must see the same data to be compared.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gradfit.config.choices import HIGHER_IS_BETTER, Metric
from gradfit.config.load import ResolvedConfig, describe_keys, parse_override, validate_tree
from gradfit.config.schema import check_metric
from gradfit.errors import ConfigError
from gradfit.sweeps import random_search
from gradfit.sweeps.random_search import RandomSearch

VALUE_KEYS = (
    "seed",
    "model.l2",
    "model.l1",
    "optimizer.learning_rate",
    "optimizer.momentum",
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.eps",
    "optimizer.decay",
    "optimizer.weight_decay",
    "optimizer.clip_norm",
    "optimizer.schedule.final_fraction",
)
PROGRAM_KEYS = (
    "model.kind",
    "model.loss",
    "model.huber_delta",
    "model.hidden",
    "model.activation",
    "model.init",
    "optimizer.name",
    "optimizer.memory_size",
    "optimizer.schedule.name",
    "optimizer.schedule.warmup_steps",
    "optimizer.schedule.warmup_fraction",
    "train.batch_size",
    "train.steps",
    "train.epochs",
    "train.tol",
    "train.shuffle",
    "runtime.precision",
)
HOST_KEYS = ("train.early_stopping.monitor", "train.early_stopping.patience", "train.early_stopping.min_delta")
SHARED_WHY = {  # why the other keys cannot be swept
    "name": "members are named after the sweep",
    "data": "every member trains on the same data and split, so that their metrics compare",
    "runtime": "a sweep runs on one set of devices (runtime.precision can be swept)",
    "train": "members log, evaluate and checkpoint together",
}
MAX_MEMBERS = 10_000  # each member is a validated config and a run directory: counted before any is built


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SweepSection(_Strict):
    grid: dict[str, list] = Field(default_factory=dict, description="key -> the values to try (every combination)")
    random: RandomSearch | None = Field(None, description="random search, combined with the grid")
    seeds: int | list[int] = Field(1, description="N (seeds seed, seed+1, ...) or a list of seeds per setting")
    metric: Metric | None = Field(
        None, description="what ranks the settings (null: val_rmse for a numeric target, val_loss for classes)"
    )
    parallel: Literal["auto"] | int = Field(
        "auto", description="members trained side by side (auto: as many as the device memory holds)"
    )

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_MEMBERS:
                raise ValueError(f"expected 1 to {MAX_MEMBERS:,} seeds")
            return value
        if not value or any(type(s) is not int or not 0 <= s < 2**32 for s in value):
            raise ValueError("expected a count >= 1 or a non-empty list of seeds (whole numbers >= 0)")
        if len(set(value)) < len(value):
            raise ValueError(f"seeds repeat in {value}; list each once")
        return value

    @field_validator("parallel")
    @classmethod
    def _parallel(cls, value):
        if value != "auto" and (isinstance(value, bool) or value < 1):
            raise ValueError("expected auto or a number of members >= 1")
        return value


@dataclasses.dataclass(frozen=True)
class Member:
    index: int
    setting: int  # members that differ only in their seed share a setting
    values: dict  # dotted key -> value: what this member sets (its setting's values and its seed)
    config: Any  # GradfitConfig

    def config_value(self, key: str) -> Any:
        return functools.reduce(getattr, key.split("."), self.config)

    @property
    def label(self) -> str:
        return ", ".join(f"{short_key(k)}={show_value(v)}" for k, v in self.values.items())

    @property
    def folder(self) -> str:
        """The sub-run's folder name: its index and values, as a file name."""
        text = "_".join(f"{short_key(k)}={show_value(v)}" for k, v in self.values.items())
        return f"{self.index:03d}_" + re.sub(r"[^A-Za-z0-9._=+-]+", "-", text)[:120]


@dataclasses.dataclass(frozen=True)
class Sweep:
    section: SweepSection
    members: list[Member]
    swept: dict  # dotted key -> its kind ("value", "program", "host")
    notes: tuple[str, ...] = ()  # what the user should know about the plan (fewer random settings than asked)

    @property
    def settings(self) -> int:
        return len({m.setting for m in self.members})


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def show_value(value: Any) -> str:
    """A swept value in labels, folder names and the ranking."""
    if isinstance(value, float):  # the shortest text that reads back as this number: two values never show alike
        return next((text for p in range(1, 17) if float(text := f"{value:.{p}g}") == value), repr(value))
    if isinstance(value, list):
        return "x".join(map(show_value, value))
    return str(value)


def key_kind(key: str) -> str:
    return (
        "value" if key in VALUE_KEYS else "program" if key in PROGRAM_KEYS else "host" if key in HOST_KEYS else "shared"
    )


def plan_sweep(
    resolved: ResolvedConfig,
    grid: Sequence[str] = (),
    seeds: int | None = None,
    random: int | None = None,
    space: Sequence[str] = (),
    metric: str | None = None,
    parallel: str | None = None,
) -> Sweep:
    """The members of the sweep the config's ``sweep:`` section and the command-line options describe (options
    win). Every problem names the file and line (or the option) and says what would work."""
    origin, lines = resolved.origin, resolved.file_lines
    raw = resolved.sweep if resolved.sweep is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: line {lines.get(('sweep',), '?')}: sweep: expected a mapping (grid, random, "
            f"seeds, metric, parallel), got {type(raw).__name__}"
        )
    raw = copy.deepcopy(raw)
    given = _merge_options(raw, grid, random, space, {"seeds": seeds, "metric": metric, "parallel": parallel})
    try:
        section = SweepSection.model_validate(raw)
    except ValidationError as exc:
        raise _problems(origin, [(tuple(e["loc"]), _message(e)) for e in exc.errors()], lines, given) from None
    keys = [*section.grid, *(section.random.space if section.random else {})]
    model = resolved.config.model
    section = section.model_copy(update={"metric": section.metric or ("val_rmse" if model.regression else "val_loss")})
    problems = [(where, message) for where, message in _key_problems(section) if message]
    if check_metric(str(section.metric), model) is not None:
        problems.append((("metric",), check_metric(str(section.metric), model)))
    if problems:
        raise _problems(origin, problems, lines, given)
    if not keys and _seed_list(section, resolved.config.seed) == [resolved.config.seed]:
        raise ConfigError(
            f"{origin}: nothing to sweep: give --grid KEY=[...], --random N with --space, --seeds N "
            "or a sweep: section (see gradfit sweep --help)"
        )
    swept = {key: key_kind(key) for key in keys}
    if section.seeds != 1:
        swept["seed"] = "value"
    settings, notes = _settings(resolved, section)
    members = _members(resolved, section, settings, lines, given)
    return Sweep(section, members, swept, notes)


def _merge_options(
    raw: dict, grid: Sequence[str], random: int | None, space: Sequence[str], plain: dict[str, Any]
) -> dict:
    """Set the command-line options into the raw ``sweep:`` section; returns {location: the option that set it}.

    ``plain``: the options that set one key each (seeds, metric, parallel), None where not given.
    """
    given: dict = {}
    for text in grid:
        key, values = _option(text, "--grid")
        if not isinstance(values, list):
            raise ConfigError(
                f"--grid {text}: expected KEY=[v1, v2, ...], e.g. --grid optimizer.learning_rate=[1e-3,3e-3]"
            )
        raw.setdefault("grid", {})
        raw["grid"] = {**(raw["grid"] if isinstance(raw["grid"], dict) else {}), key: values}
        given[("grid", key)] = "--grid"
    if random is not None or space:
        drawn: dict = raw["random"] if isinstance(raw.get("random"), dict) else {}
        if random is not None:
            drawn["trials"] = random
            given[("random", "trials")] = "--random"
        for text in space:
            key, dist = _option(text, "--space")
            drawn.setdefault("space", {})[key] = dist
            given[("random", "space", key)] = "--space"
        raw["random"] = drawn
    for name, value in plain.items():
        if value is not None:
            raw[name] = value
            given[(name,)] = f"--{name}"
    return given


def _option(text: str, flag: str) -> tuple[str, Any]:
    try:
        key, value = parse_override(text)
    except ConfigError as exc:
        example = (
            "optimizer.learning_rate=[1e-3,3e-3]"
            if flag == "--grid"
            else "'optimizer.learning_rate={log_uniform: [1e-4, 1e-1]}'"
        )
        cause = str(exc).split(": ", 1)[-1]
        raise ConfigError(
            f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} {example}" + (f" ({cause})" if "YAML" in cause else "")
        ) from None
    return ".".join(key), value


def _message(error: Mapping[str, Any]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown key; allowed: {', '.join(SweepSection.model_fields)} (and in random: trials, seed, space)"
    if error["type"] == "missing":
        return {
            "trials": "missing: how many settings to draw (--random N)",
            "space": "missing: the ranges to draw from (--space KEY={log_uniform: [lo, hi]})",
        }.get(error["loc"][-1], "missing")
    got = error.get("input")
    return message + ("" if isinstance(got, dict) else f" (got {got!r})")


def _key_problems(section: SweepSection):
    """(location, message) for each swept key that is unknown, cannot be swept or has an unusable range."""
    known = {".".join(info.key) for info in describe_keys()}
    places: list[tuple[tuple[str, ...], str, Any]] = [
        (("grid", key), key, values) for key, values in section.grid.items()
    ]
    if section.random is not None:
        places += [(("random", "space", key), key, dist) for key, dist in section.random.space.items()]
    seen: dict = {}
    for where, key, values in places:
        if key in seen:
            yield where, f"swept twice (also in sweep.{'.'.join(seen[key])}); sweep each key once"
        seen[key] = where[:-1]
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            yield where, "unknown key" + (f"; did you mean '{close[0]}'?" if close else " (see gradfit config show)")
        elif key == "seed" and section.seeds != 1:
            yield where, "seed is swept by sweep.seeds; use one or the other"
        elif key_kind(key) == "shared":
            why = SHARED_WHY.get(key.split(".")[0], "it is shared by every member")
            yield where, f"cannot be swept: {why}"
        elif where[0] == "grid" and not values:
            yield where, "no values; list at least one"
        elif where[0] == "grid" and len(values) > MAX_MEMBERS:
            yield where, f"at most {MAX_MEMBERS:,} values"
        elif where[0] == "random":
            yield where, random_search.problem(values)


def _seed_list(section: SweepSection, base: int) -> list[int]:
    if isinstance(section.seeds, list):
        return list(section.seeds)
    return [(base + i) % 2**32 for i in range(section.seeds)]


def _settings(resolved: ResolvedConfig, section: SweepSection) -> tuple[list[dict], tuple[str, ...]]:
    """Every setting (the grid's combinations times the random draws) and notes; the members are counted before
    any setting is made, so a sweep too large to hold is refused at once."""
    grid_size = math.prod(len(values) for values in section.grid.values())
    trials = section.random.trials if section.random is not None else 1
    seeds = len(_seed_list(section, resolved.config.seed))
    count = grid_size * trials * seeds
    if count > MAX_MEMBERS:
        factors = [f"{len(values):,} {short_key(key)}" for key, values in section.grid.items()]
        factors += [f"{trials:,} random trials"] * (section.random is not None) + [f"{seeds:,} seeds"] * (seeds > 1)
        raise ConfigError(
            f"{resolved.origin}: sweep: {count:,} members ({' x '.join(factors)}); at most {MAX_MEMBERS:,} in one "
            "sweep: sweep fewer values, or split the sweep"
        )
    settings = [dict(zip(section.grid, combo)) for combo in itertools.product(*section.grid.values())]
    if section.random is None:
        return settings, ()
    draws, note = random_search.settings(section.random)
    return [{**s, **d} for s in settings for d in draws], (note,) if note else ()


def _members(
    resolved: ResolvedConfig, section: SweepSection, settings: list[dict], lines: dict, given: dict
) -> list[Member]:
    seeds = _seed_list(section, resolved.config.seed)
    places: dict[str, tuple[str, ...]] = {key: ("grid", key) for key in section.grid}
    places.update({key: ("random", "space", key) for key in (section.random.space if section.random else {})})
    base_data_seed = resolved.config.data.seed if resolved.config.data.seed is not None else resolved.config.seed
    members: list[Member] = []
    seen: dict[str, int] = {}
    for s, setting in enumerate(settings):
        for seed in seeds:
            values = {**setting, **({"seed": seed} if len(seeds) > 1 or section.seeds != 1 else {})}
            config = _member_config(
                resolved,
                setting,
                seed if "seed" in values else None,
                base_data_seed,
                len(members),
                lines,
                given,
                places,
            )
            signature = config.model_dump_json(exclude={"name"})
            if signature in seen:
                raise ConfigError(
                    f"{resolved.origin}: sweep: members {seen[signature]} and {len(members)} have the "
                    f"same config ({Member(0, 0, values, None).label or 'the base config'}); each "
                    "member must differ"
                )
            seen[signature] = len(members)
            values = {key: functools.reduce(getattr, key.split("."), config) for key in values}  # as validated
            members.append(Member(len(members), s, values, config))
    return members


def _member_config(
    resolved: ResolvedConfig,
    setting: dict,
    seed: int | None,
    data_seed: int,
    index: int,
    lines: dict,
    given: dict,
    places: dict,
):
    tree = copy.deepcopy(resolved.tree)
    where = {}
    for key, value in setting.items():
        path = tuple(key.split("."))
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[path[-1]] = copy.deepcopy(value)
        place = places[key]
        where[path] = _where(("sweep", *place), lines, given, place)
    if seed is not None:
        tree["seed"] = seed
        tree.setdefault("data", {})["seed"] = data_seed  # the split stays the base config's
        where[("seed",)] = _where(("sweep", "seeds"), lines, given, ("seeds",))
    base_name = resolved.config.name
    tree["name"] = f"{base_name[:95]}-{index:03d}" if index < 1000 else f"{base_name[:93]}-{index}"
    label = ", ".join(f"{k}={show_value(v)}" for k, v in setting.items()) or "the base config"
    return validate_tree(tree, f"{resolved.origin}: sweep member {index} ({label})", lines, where)


def _where(file_key: tuple, lines: dict, given: dict, sweep_key: tuple) -> str:
    if sweep_key in given:
        return given[sweep_key]
    line = lines.get(file_key)
    return f"line {line} (sweep)" if line is not None else "sweep"


def _problems(origin: str, problems: list, lines: dict, given: dict) -> ConfigError:
    located = []
    for loc, message in problems:
        loc = tuple(str(part) for part in loc)
        flag = next((flag for key, flag in given.items() if loc[: len(key)] == key), None)
        line = next((lines[("sweep", *loc[:n])] for n in range(len(loc), 0, -1) if ("sweep", *loc[:n]) in lines), None)
        where = f"{flag}: " if flag else f"line {line}: " if line is not None else ""
        located.append((line or 0, f"  {where}sweep.{'.'.join(loc)}: {message}"))
    located.sort()
    count = f"{len(located)} problem" + ("s" if len(located) > 1 else "")
    return ConfigError(f"{origin}: {count} in the sweep:\n" + "\n".join(text for _, text in located))


def traced_keys(config) -> list[str]:
    """The value keys that ``config``'s compiled program takes as arguments. A null (clip_norm off) is a choice,
    not a value; an exponential schedule's final fraction is tested in Python by optax."""
    keys = [key for key in VALUE_KEYS if functools.reduce(getattr, key.split("."), config) is not None]
    if config.optimizer.schedule.name == "exponential":
        keys.remove("optimizer.schedule.final_fraction")
    return keys


def program_key(config) -> str:
    """Members with equal keys compile to one program: the config with its traced values and host keys blanked."""
    tree = config.model_dump(mode="json", exclude={"name"})
    for key in (*traced_keys(config), *HOST_KEYS):
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[last] = "..."
    return json.dumps(tree, sort_keys=True)


def rank(members: list[dict], metric: str) -> list[dict]:
    """Settings ranked by ``metric`` (the final value of each member's saved parameters): mean and sample std over
    the seeds that completed. Settings with a failed member rank after the others; the first is marked best."""
    settings: dict = {}
    for member in members:
        settings.setdefault(member["setting"], []).append(member)
    rows = []
    for setting, group in settings.items():
        values = [
            m["final"][metric]
            for m in group
            if m["status"] == "completed" and m.get("final") and m["final"].get(metric) is not None
        ]
        failed = sum(m["status"] == "failed" for m in group)
        rows.append(
            {
                "setting": setting,
                "values": {k: v for k, v in group[0]["values"].items() if k != "seed"},
                "members": [m["index"] for m in group],
                "completed": len(values),
                "failed": failed,
                "pending": sum(m["status"] not in ("completed", "failed") for m in group),
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            }
        )
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    rows.sort(key=lambda r: (r["failed"] > 0, r["mean"] is None, sign * (r["mean"] or 0.0), r["setting"]))
    for i, row in enumerate(rows):
        row["rank"], row["best"] = i + 1, i == 0 and row["mean"] is not None and not row["failed"]
    return rows
